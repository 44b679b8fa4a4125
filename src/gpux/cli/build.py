"""``gpux build``: validate a folder's gpux.yml and its model, and store the bundle under a name."""

from __future__ import annotations

from pathlib import Path

import typer

from gpux.cli import common
from gpux.errors import ConfigError


def build(
    folder: Path = typer.Argument(..., help="A folder with a gpux.yml."),
    tag: str = typer.Option("latest", "--tag", "-t", help="Tag to store the build under (name:tag)."),
) -> None:
    """Check FOLDER/gpux.yml against its model and store it so `gpux run NAME` works."""
    from gpux.config import find_config, load_config, manifest_from_config
    from gpux.engine.model import load
    from gpux.store.bundle import Bundle
    from gpux.store.local import Store, parse_ref

    cfg_path = find_config(folder) if folder.is_dir() else None
    if cfg_path is None:
        raise ConfigError(f"{folder} has no gpux.yml", hint="create one; see docs/config.md")
    cfg = load_config(cfg_path)
    parse_ref(f"{cfg.name}:{tag}")
    manifest, files = manifest_from_config(cfg, cfg_path.parent)
    manifest.tag = tag
    src_root = files[manifest.graphs["model"]].parent
    # Load once from the source on CPU: proves the graph loads and the declarations fit it,
    # whatever provider the config asks for at run time.
    checked = load(Bundle(src_root, manifest), "cpu", log_level=common.ort_log_level())
    bundle = Store().publish(manifest, files)
    console = common.err_console()
    total = sum(f["size"] for f in bundle.manifest.files.values())
    console.print(f"[bold green]built[/] {bundle.name}:{tag}  ({total / 1e6:.2f} MB, "
                  f"{len(bundle.manifest.files)} file(s)) -> {bundle.root}")
    for spec in checked.inputs:
        console.print(f"  input  {spec.name}: {spec.describe()}")
    for spec in checked.outputs:
        console.print(f"  output {spec.name}: {spec.describe()}")
    typer.echo(f"{bundle.name}:{tag}")
