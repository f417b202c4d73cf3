"""Support package of ``add_inductor_metadata_to_perf_trace.py``: output-code log parser, streaming
trace reader/writer, kernel-event matcher, the profiling-debug tool and the synthetic-trace benchmark."""
