"""``gpux pull``: fetch a model, convert it to ONNX for its task, check parity, store it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import typer

from gpux.cli import common
from gpux.errors import ConvertError, ModelNotFoundError, RegistryError, UsageError
from gpux.registry import split_revision

if TYPE_CHECKING:
    from gpux.registry import Located
    from gpux.store.local import Store


def pull(
    model: str = typer.Argument(..., help="A Hugging Face id (org/name[@revision]), a local HF-layout folder or a .gguf file."),
    task: Optional[str] = typer.Option(None, "--task", help="Override the task read from the model's metadata."),  # noqa: UP007
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit sha."),  # noqa: UP007
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights."),
    force: bool = typer.Option(False, "--force", help="Convert again even if a matching bundle is stored."),
    optimize: Optional[str] = typer.Option(None, "--optimize", help="O1, O2 or O3: graph optimisations saved."),  # noqa: UP007
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 or fp16 (inputs/outputs stay as they are)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic quantisation; int8-static: "  # noqa: UP007
                                           "calibrated static (QDQ) quantisation; int8-mixed: dynamic, with "
                                           "the fewest most sensitive nodes kept fp32 that reach cosine 0.99."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Refuse a variant below this cosine."),  # noqa: UP007
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Classifiers: argmax agreement floor; "  # noqa: UP007
                                                  "text-generation: teacher-forced top-1 agreement with fp32."),
    max_ppl_increase: Optional[float] = typer.Option(None, "--max-ppl-increase", help="Text-generation: refuse a "  # noqa: UP007
                                                     "variant whose perplexity rises more than this (0.05 = 5%)."),
) -> None:
    """Pull MODEL and convert it; afterwards `gpux run MODEL` is instant."""
    from gpux.convert.optimize import Variant
    from gpux.registry import locate
    from gpux.store import stats
    from gpux.store.local import Store

    from gpux.cli.progress import download_progress, rich_tqdm

    variant = Variant(optimize.upper() if optimize else None, dtype, quantize)  # checked before any work
    console = common.err_console()
    store = Store()
    try:
        with download_progress(console) as progress:
            located = locate(model, revision, allow_pickle, rich_tqdm(progress, f"downloading {model}"))
    except (ModelNotFoundError, RegistryError) as exc:
        repo = split_revision(model)[0]
        close = [n for n in store.close_names(repo) if n != repo]
        if close:  # a typo of a stored model reads better as that than as "cannot reach the Hub"
            exc.hint = f"did you mean {' or '.join(close)} (stored)? " + (exc.hint or "")
        raise
    if located.source.get("kind") == "local":
        from gpux.registry import local

        wanted, located.name = located.name, local.store_name(located.folder, local.owners(store))
        if located.name != wanted:
            console.print(f"{wanted!r} is taken by another folder or model in the store; storing "
                          f"{located.folder.name} as {located.name}", markup=False, highlight=False)
    with store.lock(located.name):  # a second pull of the same model waits, then finds it stored
        hit = None if force else _stored(store, located, task)
        if hit is None:
            try:
                from gpux.convert.pipeline import convert
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ConvertError(f"converting needs the convert extra ({exc.name} is missing)",
                                   hint="pip install 'gpux[convert]'") from exc
            with console.status(f"converting {located.name} (export + parity check)"):
                from gpux.registry.local import with_digest

                source = with_digest(located.source, located.folder)  # a local folder's content, keyed
                bundle = convert(located.folder, name=located.name, source=source, task=task,
                                 allow_pickle=allow_pickle, store=store)
    if hit is not None:
        ref = hit
        stats.record(store.root, ref, hit=True)
        console.print(f"{ref} is up to date", markup=False, highlight=False)
    else:
        ref = f"{bundle.name}:{bundle.manifest.tag}"
        stats.record(store.root, ref, hit=False)
        conv = bundle.manifest.conversion
        cosine, max_abs = _worst(conv["parity"])
        console.print(f"pulled {ref}  task {bundle.manifest.task}, "
                      f"parity cosine {cosine:.6f} max-abs {max_abs:.2e}, "
                      f"converted in {conv['seconds']:.1f} s", markup=False, highlight=False)
    # A variant takes the model's lock itself (flock is per open file: never nest it).
    typer.echo(ref if variant.empty else _variant(store, ref, variant, min_cosine, min_agreement, force,
                                                  max_ppl_increase))


def _worst(parity: dict[str, Any]) -> tuple[float, float]:
    """The lowest cosine and largest max-abs of a parity record: one graph's, or each graph's (two towers)."""
    records = [parity] if "cosine_min" in parity else [v for v in parity.values() if isinstance(v, dict)]
    cosines = [float(r["cosine_min"]) for r in records if "cosine_min" in r] or [float("nan")]
    diffs = [float(r.get("max_abs", 0.0)) for r in records] or [0.0]
    return min(cosines), max(diffs)


def _variant(store: Store, base: str, variant: Any, min_cosine: float | None, min_agreement: float | None,
             force: bool, max_ppl_increase: float | None = None) -> str:
    """``name:tag`` of ``variant`` of the stored ``base``, made unless an up-to-date one is stored."""
    from gpux.convert.optimize import floors, make_variant
    from gpux.errors import GpuxError

    name, _, tag = base.partition(":")
    ref = f"{name}:{tag}-{variant.suffix()}"
    console = common.err_console()
    with store.lock(name):
        try:
            conversion = store.manifest(ref).conversion
            bm = store.manifest(base)
            base_digest = bm.files[bm.graphs[bm.default_graph]]["sha256"]
            # Up to date: made from this base, and its measured parity meets the floors asked for now (a
            # variant stored under a looser --min-cosine is not what a stricter pull asks for).
            par = conversion.get("parity_vs_fp32") or {}
            if "ppl_increase" in par:  # a text-generation variant: agreement and perplexity on a text
                from gpux.convert import lm_variants

                meets = lm_variants.meets(par, *lm_variants.floors(variant.precision, min_agreement, max_ppl_increase))
            else:
                cos_floor, agree_floor = floors(variant, min_cosine, min_agreement)
                agreement = par.get("argmax_agreement")
                meets = par.get("cosine_min", -1.0) >= cos_floor and (1.0 if agreement is None else agreement) >= agree_floor
            if conversion.get("base_digest") == base_digest and meets and not force:
                store.get(ref)
                console.print(f"{ref} is up to date", markup=False, highlight=False)
                return ref
        except GpuxError:
            pass
        with console.status(f"making {ref} (and checking it against fp32)"):
            if "decoder" in store.manifest(base).graphs:  # an encoder–decoder: judged by generated tokens
                from gpux.convert import seq2seq_variants

                if variant.optimize or variant.dtype != "fp32" or variant.quantize != "int8":
                    raise UsageError("encoder–decoder models take --quantize int8 only",
                                     hint="leave --optimize/--dtype out")
                bundle = seq2seq_variants.make(base, variant.precision, store=store, min_agreement=min_agreement)
            else:
                bundle = make_variant(base, variant, store=store, min_cosine=min_cosine,
                                      min_agreement=min_agreement, max_ppl_increase=max_ppl_increase)
    par = bundle.manifest.conversion["parity_vs_fp32"]
    if "ppl_increase" in par:
        console.print(f"made {ref}  ({store.size(bundle.manifest) / 1e6:.1f} MB) vs fp32: top-1 agreement "
                      f"{par['agreement']:.1%}, perplexity {par['ppl_fp32']:.3f} -> {par['ppl']:.3f} "
                      f"({par['ppl_increase']:+.2%})", markup=False, highlight=False)
        return ref
    agree = f", argmax agreement {par['argmax_agreement']:.1%}" if "argmax_agreement" in par else ""
    size = store.size(bundle.manifest) / 1e6
    if "positions" in par:  # an encoder–decoder: teacher-forced generated tokens
        console.print(f"made {ref}  ({size:.1f} MB) vs fp32: top-1 agreement {par['argmax_agreement']:.1%} over "
                      f"{par['positions']} teacher-forced tokens (logits cosine >= {par['cosine_min']:.3f})",
                      markup=False, highlight=False)
        return ref
    console.print(f"made {ref}  ({size:.1f} MB) vs fp32: cosine {par['cosine_min']:.5f}, max-abs {par['max_abs']:.2e}"
                  f"{agree}", markup=False, highlight=False)
    return ref


def _stored(store: Store, located: Located, task: str | None) -> str | None:
    """``name:tag`` of a stored conversion of exactly this source (and task), if every blob hashes right.

    A pull hashes every blob whatever its stamp says (``full``): it is the
    command people run when something looks wrong, and a bad blob found here is
    deleted and converted again rather than reported "up to date". A local
    folder matches by path and content (a re-saved folder converts again); a
    GGUF by its sha256 alone (the same bytes anywhere are the same model).
    """
    from gpux.errors import GpuxError
    from gpux.registry import gguf, local

    name, source = located.name, located.source
    for tag in store.tags(name):
        if task is not None and tag != task:
            continue
        try:
            stored = store.manifest(f"{name}:{tag}").source
            same = (local.same_content(stored, source, located.folder) if source.get("kind") == "local"
                    else gguf.same_source(stored, source) if source.get("kind") == "gguf"
                    else stored == source)
            if same:
                store.get(f"{name}:{tag}", full=True)  # a corrupt or missing blob means convert again
                return f"{name}:{tag}"
        except GpuxError:
            continue
    return None
