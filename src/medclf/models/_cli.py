"""`medclf models`: the model registry with input size, parameters and offline pretrained weights."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the model registry (small CNNs, offline-pretrained timm backbones)",
        description="List the registered models. Any other timm model name also works in model.name "
        "(pretrained weights for those need a download).",
    )
    p.add_argument(
        "--no-params", action="store_true", help="skip building each model to count its parameters"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medclf.errors import ConfigError
    from medclf.models import create_model, get_model_entry, list_models, model_default_cfg
    from medclf.models.timm_adapter import offline_pretrained_names

    offline = offline_pretrained_names()
    rows = []
    for name in list_models():
        cfg = model_default_cfg(name)
        entry = get_model_entry(name)
        params = "-"
        if not args.no_params:
            kw = (
                {"num_meta": 4, "meta_only": True}
                if entry and getattr(entry.factory, "meta_only", False)
                else {}
            )
            try:
                model = create_model(name, 2, **kw)
                params = f"{sum(p.numel() for p in model.parameters()):,}"
            except ConfigError:  # composite models (the fold ensemble) are built from trained runs only
                params = "-"
        desc = entry.description if entry else "timm backbone"
        rows.append(
            (
                name,
                f"{cfg['input_size']}",
                str(cfg["in_chans"]),
                params,
                "yes" if name in offline else "no",
                desc,
            )
        )
    header = ("name", "input", "chans", "params", "pretrained-offline", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    print(
        "Any timm model name also works (e.g. resnet50, densenet201, xception41); params are for 2 classes."
    )
    return 0
