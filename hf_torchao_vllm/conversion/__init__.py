"""The compressed-tensors half: the one checkpoint reader (``checkpoint_reader``), the streaming
safetensors writer (``safetensors_writer``), the torchao -> compressed-tensors scheme mapping
(``schemes``), conversion (``convert``), validation against torchao (``validate``) and the read-only
checkpoint summary (``checkpoint_summary``)."""
