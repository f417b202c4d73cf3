"""The vLLM half: what vLLM can serve here (``vllm_support``, applied before writing and before an
engine starts) and the vLLM runner (``vllm_runner``)."""
