"""What the quantize script reports: the per-weight table (``print_summary``) and the payload of
``quantization_report.json`` (``report_payload``)."""

from __future__ import annotations

from hf_torchao_vllm.quantization import quantize


def print_summary(model, plan: quantize.Plan) -> list[dict]:
    """Table of every candidate weight: quantized (stored type, dtype, granularity) or why skipped."""
    from rich.console import Console
    from rich.table import Table

    from hf_torchao_vllm.quantization.recipes import describe_weight

    params = dict(model.named_parameters())
    rows = []
    for target in plan.selection.selected:
        info = describe_weight(params[target.param_name])
        recipe = plan.recipe_by_target.get(target.name, plan.recipe.name)
        rows.append(
            {
                "name": target.name,
                "shape": list(target.shape),
                "status": "quantized",
                "recipe": recipe,
                **info,
            }
        )
    for name, reason in plan.selection.skipped.items():
        target = plan.selection.targets[name]
        info = describe_weight(params[target.param_name]) if target.param_name in params else {}
        rows.append({"name": name, "shape": list(target.shape), "status": f"skipped: {reason}", **info})
    counts = f"{len(plan.selection.selected)} quantized, {len(plan.selection.skipped)} skipped"
    table = Table(title=f"recipe {plan.recipe.name}: {counts}")
    for column in ("weight", "shape", "tensor type", "qdata dtype", "granularity", "status"):
        table.add_column(column)
    for row in rows:
        cells = (row.get("tensor_type", "-"), row.get("qdtype", "-"), row.get("granularity", "-"))
        table.add_row(row["name"], "x".join(map(str, row["shape"])), *cells, row["status"])
    Console(width=200).print(table)
    return rows


def report_payload(plan, args: dict, quality, rows, generations, weight_files) -> dict:
    return {
        "model": plan.model_source,
        "recipe": plan.recipe.name,
        "options": args,
        "torchao_layout": {name: v.label for name, v in plan.variants.items()},
        "device": str(plan.device),
        "vllm_servable": plan.vllm_problem is None,
        "vllm_problem": plan.vllm_problem,
        "quality": quality.as_dict(),
        "weights": rows,
        "generations": generations,
        "reload_logits_identical": True,
        "weight_files": weight_files,
    }
