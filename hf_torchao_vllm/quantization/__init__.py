"""The quantize half: the recipe registry (``recipes``), the one quantize path every tool calls
(``quantize``: plan, quantize on load, verify, save, reload), quality against bf16 (``quality``) and
the quantize script's report (``report``)."""
