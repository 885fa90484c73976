"""The report's summary grade and its plain-language "what to know" list, from the numbers in stats.json.

Rules:
- every check has a status: pass / warn / fail from its thresholds (settings ``report.grade_*``), or ``n/a`` when it
  could not be measured (and why);
- the grade is the worst measured status; a required check that could not be measured caps the grade at WARN, so a
  job can never PASS on checks that did not run;
- optional checks (the ground-truth F-score) take part only when their input was given.

Kept free of torch/trimesh: the daemon's failure reports import this module's siblings cheaply.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "n/a"]
ORDER: dict[str, int] = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    name: str  # stable key ("coverage", "camera_spread", ...)
    label: str  # for people
    value: float | None
    status: Status
    pass_at: float | None = None
    warn_at: float | None = None
    better: Literal["higher", "lower"] | None = None
    unit: str = ""  # "share": a fraction shown as a percentage
    detail: str = ""  # what the value means here, or why it could not be measured
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(name: str, label: str, value: float | None, pass_at: float, warn_at: float,
            better: Literal["higher", "lower"] = "higher", unit: str = "", detail: str = "",
            missing: str = "not measured", required: bool = True) -> Check:
    """A numeric check: pass at or beyond ``pass_at``, warn at or beyond ``warn_at``, else fail (``better`` says
    which way 'beyond' is). ``value`` None: status n/a with ``missing`` as the reason."""
    if value is None:
        return Check(name, label, None, "n/a", pass_at, warn_at, better, unit, missing, required)
    if better == "higher":
        status: Status = "pass" if value >= pass_at else "warn" if value >= warn_at else "fail"
    else:
        status = "pass" if value <= pass_at else "warn" if value <= warn_at else "fail"
    return Check(name, label, float(value), status, pass_at, warn_at, better, unit, detail, required)


def gate_check(gate: dict[str, Any], cfg: Any) -> Check:
    """A mesh quality gate (pipeline.report.gates) as a check. Self-intersections are graded by their share of the faces
    (a few are common in reconstructions and harmless on their own); the other gates by their own verdict
    (a repaired problem passes)."""
    name, detail = gate["name"], gate.get("detail", "")
    if name == "self-intersections":
        if gate.get("status") == "n/a" or "not checked" in detail:
            return Check("self_intersections", "self-intersecting faces (share)", None, "n/a", detail=detail)
        return measure("self_intersections", "self-intersecting faces (share)", gate.get("value"),
                       cfg.grade_self_intersections_pass, cfg.grade_self_intersections_warn, better="lower",
                       unit="share", detail=detail, missing=detail or "not measured")
    status = {"fixed": "pass", "pass": "pass", "warn": "warn", "fail": "fail"}.get(gate.get("status", ""), "n/a")
    return Check(f"gate:{name}", f"mesh: {name}", None, status, detail=detail)  # type: ignore[arg-type]


def heldout_missing(stats: dict[str, Any]) -> str:
    cams = stats.get("cameras") or {}
    held = cams.get("holdout", 0)
    views = cams.get("views")
    if not held:
        return (f"no photo was held out ({views} photos; one or two are held out from 8 photos on, unless "
                f"images.holdout_every = 0)")
    return "the held-out photos have no masks to compare with"


def _gap_where(sp: dict[str, Any]) -> str:
    """Where the largest gap between cameras is: 'the back (between photos a.jpg and b.jpg)'."""
    photos = sp.get("gap_photos") or []
    between = f"between photos {photos[0]} and {photos[1]}" if len(photos) == 2 and photos[0] != photos[1] else ""
    side = sp.get("gap_side")
    if side and between:
        return f"{side} ({between})"
    return side or between or "one side"


def build_checks(stats: dict[str, Any], cfg: Any) -> list[Check]:
    """Every check of a finished job, in the order the report lists them."""
    q = stats.get("quality") or {}
    held = q.get("heldout") or {}
    why_held = heldout_missing(stats) if not held.get("views") else "not measured"
    # photos without masks (the dense method) have no silhouette to compare with: their colours still are
    unmasked = bool(held.get("views")) and held.get("mask_iou_mean") is None
    checks = [
        measure("heldout_iou", "held-out mask IoU", held.get("mask_iou_mean"), cfg.grade_iou_pass,
                cfg.grade_iou_warn, detail=f"mean over {held.get('views')} photo(s) not used for fitting",
                missing=("the held-out photos have no masks to compare with (the shape was made from the photos "
                         "alone); their colours are compared below") if unmasked else why_held,
                required=not unmasked),
        measure("heldout_psnr", "held-out colour PSNR", held.get("psnr_mean"), cfg.grade_psnr_pass,
                cfg.grade_psnr_warn, unit="dB", detail=f"mean over {held.get('views')} photo(s)", missing=why_held),
    ]
    cov = q.get("coverage") or {}
    checks.append(measure(
        "coverage", "coverage", cov.get("share"), cfg.grade_coverage_pass, cfg.grade_coverage_warn, unit="share",
        detail=(f"share of the surface seen by >= {cov.get('min_views')} photos within "
                f"{cov.get('max_angle_deg')}° of its normal; {cov.get('mean_views', 0):.1f} photos per point "
                f"on average") if cov else "", missing="no mesh to measure"))
    sp = q.get("camera_spread") or {}
    checks.append(measure(
        "camera_spread", "largest gap between cameras around the object", sp.get("largest_gap_deg"),
        cfg.grade_spread_gap_pass_deg, cfg.grade_spread_gap_warn_deg, better="lower", unit="°",
        detail=(f"{_gap_where(sp)}; elevations {sp.get('elevation_min_deg', 0):.0f}° to "
                f"{sp.get('elevation_max_deg', 0):.0f}°") if sp else "", missing="no cameras"))
    bc = q.get("border") or {}
    checks.append(measure(
        "border_cut", "photos with the object cut by the image border (share)", bc.get("share"),
        cfg.grade_border_cut_pass, cfg.grade_border_cut_warn, better="lower", unit="share",
        detail=f"{bc.get('cut')} of {bc.get('photos')} photos" if bc else "", missing="no cameras"))
    base = q.get("base") or {}
    # lower is better; any gap beyond the pass threshold warns (never fails: the photos, not a mask, measured it)
    checks.append(measure(
        "base", "height the mesh stops short of what the photos measured near the table (share)", base.get("share"),
        cfg.grade_base_gap_pass, 1.0, better="lower", unit="share",
        detail=(f"the mesh ends {base.get('share', 0):.0%} of the object's height above the lowest of "
                f"{base.get('points')} points the photos measured") if base else "",
        missing="no support plane or measured points (posed or masked capture)", required=False))
    hp = q.get("heldout_points") or {}
    # lower is better; like the base check it warns and never fails: SfM points, not a mask, measured it
    held_points = measure(
        "heldout_points", "object points the held-out photos show where the mesh renders nothing (share)",
        hp.get("share"), cfg.grade_heldout_points_pass, 1.0, better="lower", unit="share",
        detail=(f"{hp.get('missed')} of {hp.get('observations')} observations in {hp.get('views')} held-out "
                f"photo(s), mostly {hp.get('where')}") if hp else "",
        missing="no structure-from-motion points seen by held-out photos (posed or masked capture)", required=False)
    if held_points.status == "warn" and hp.get("missed", 0) < cfg.grade_heldout_points_min_missed:
        # a handful of stray SfM points is not a missing part
        held_points = replace(held_points, status="pass", detail=held_points.detail + (
            f"; fewer than {cfg.grade_heldout_points_min_missed} missed observations count as noise"))
    checks.append(held_points)
    gt = q.get("gt")
    if gt:
        checks.append(measure("gt_fscore", f"F-score against the ground truth (@{100 * gt['tau_rel']:g}% of its "
                              "diagonal)", gt.get("fscore"), cfg.grade_fscore_pass, cfg.grade_fscore_warn,
                              detail=f"{gt.get('file')}: precision {gt.get('precision', 0):.3f}, recall "
                                     f"{gt.get('recall', 0):.3f}", required=False))
    if (stats.get("mesh") or {}).get("handles") is not None:  # measured on every mesh written since it exists
        checks.append(topology_check(stats["mesh"], cfg))
    for g in (stats.get("texture") or {}).get("gates", []):
        checks.append(gate_check(g, cfg))
    return checks


def topology_check(mesh: dict[str, Any], cfg: Any) -> Check:
    """Handles (tunnels through the surface) against what a scanned object plausibly has: a few (a mug's handle,
    the gaps of a chair) pass; dozens or hundreds mean a surface shredded into tunnels by noise, which every other
    mesh check (watertight, manifold) lets through."""
    handles = mesh.get("handles")
    return measure("topology", "handles (tunnels through the surface)", handles, cfg.grade_handles_pass,
                   cfg.grade_handles_warn, better="lower",
                   detail=(f"genus summed over {mesh.get('components')} piece(s); a scanned object has a few at "
                           "most") if handles is not None else "",
                   missing="no mesh to measure")


@dataclass(frozen=True)
class Grade:
    grade: Literal["pass", "warn", "fail"]
    checks: tuple[Check, ...]
    summary: str
    not_measured: tuple[Check, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"grade": self.grade, "summary": self.summary, "checks": [c.to_dict() for c in self.checks],
                "measured": sum(1 for c in self.checks if c.status != "n/a"),
                "not_measured": [{"name": c.name, "label": c.label, "why": c.detail} for c in self.not_measured]}


def grade_checks(checks: list[Check]) -> Grade:
    """The worst measured status; capped at WARN when a required check could not be measured. With nothing
    measured at all the grade is WARN (nothing vouches for the result)."""
    measured = [c for c in checks if c.status != "n/a"]
    missing = tuple(c for c in checks if c.status == "n/a" and c.required)
    worst = max((c.status for c in measured), key=lambda s: ORDER[s], default="warn")
    grade: Literal["pass", "warn", "fail"] = "warn" if worst == "pass" and missing else worst  # type: ignore[assignment]
    parts = []
    for st in ("fail", "warn"):
        names = [c.label for c in measured if c.status == st]
        if names:
            parts.append(f"{len(names)} check(s) {'fail' if st == 'fail' else 'warn'}: {', '.join(names)}")
    parts.append(f"{len(measured)} of {len(checks)} checks measured")
    if missing:
        parts.append("not measured: " + "; ".join(f"{c.label} ({c.detail})" for c in missing))
        if worst == "pass":
            parts.append("so the grade cannot be PASS")
    return Grade(grade=grade, checks=tuple(checks), summary="; ".join(parts) + ".", not_measured=missing)


def _side_phrase(side: str, count: int, total: int) -> str:
    if side in ("top", "bottom"):
        return f"the {side} of the object is cut off in {count} of {total} photos"
    return f"the object runs off the {side} edge in {count} of {total} photos"


def what_to_know(stats: dict[str, Any], grade: Grade, published: set[str]) -> list[dict[str, str]]:
    """Short, plain sentences for the top of the report, most serious first: what went wrong and what to do.
    ``published``: the files next to the report (only those are mentioned). -> [{level, text}]"""
    by = {c.name: c for c in grade.checks}
    q = stats.get("quality") or {}
    items: list[tuple[int, str, str]] = []  # (order, level, text)

    def add(check: Check | None, text: str) -> None:
        if check is not None and check.status in ("fail", "warn"):
            items.append((ORDER[check.status], check.status, text))

    c = by.get("base")
    if c and c.value is not None:
        add(c, f"The mesh ends {c.value:.0%} of the object's height above the lowest part the photos measured: its "
               "lower part (legs, feet, a stand near the table) is probably missing. Photograph the base from lower "
               "angles, or give masks (masks/<image>.png)")
    c = by.get("heldout_points")
    if c and c.value is not None:
        hp = q.get("heldout_points") or {}
        add(c, f"The held-out photos show {hp.get('where')} of the object where the mesh has nothing ({c.value:.0%} "
               f"of the object points they saw): that part is missing from the mesh. Photograph it from more sides "
               "and closer, with the table or background plainly different from it, or give masks "
               "(masks/<image>.png)")
    cov = q.get("coverage") or {}
    c = by.get("coverage")
    if c and c.value is not None:
        side = cov.get("unseen_side")
        k = cov.get("min_views")
        never = cov.get("never_seen_share", 0.0)
        seen = f"only {c.value:.0%} of the surface was seen by {k} or more photos ({cov.get('mean_views', 0):.1f} " \
               f"photos see each point on average)"
        if side:
            how = "was never photographed" if never >= 0.5 * (1 - c.value) else f"was seen by fewer than {k} photos"
            add(c, f"{side.capitalize()} {how}: {seen}. Hatched areas in the renders are guessed: take photos of "
                   f"{side}.")
        else:
            add(c, f"{seen[0].upper() + seen[1:]}. Hatched areas in the renders are guessed: photograph them.")
    sp = q.get("camera_spread") or {}
    c = by.get("camera_spread")
    if c and c.value is not None:
        if sp.get("ring_cameras") is not None and sp["ring_cameras"] < 2:
            add(c, "Almost every photo looks from straight above or below: walk around the object, a photo every "
                   "15-20°.")
        else:
            add(c, f"No photo looks from {_gap_where(sp)}: the cameras leave a {c.value:.0f}° gap around the "
                   f"object. Walk all the way around it, a photo every 15-20°.")
    bc = q.get("border") or {}
    c = by.get("border_cut")
    if c and c.value is not None and bc.get("cut"):
        sides = sorted(((n, s) for s, n in (bc.get("per_side") or {}).items() if n), reverse=True)
        phrases = [_side_phrase(s, n, bc["photos"]) for n, s in sides[:2]]
        text = "; ".join(phrases)
        add(c, f"{text[0].upper() + text[1:]}: step back or zoom out so the whole object fits with a margin.")
    c = by.get("heldout_iou")
    if c and c.status == "n/a" and c.required:
        items.append((1, "warn", f"The mesh could not be checked against a photo it was not fitted to: "
                                 f"{c.detail}. The grade cannot be PASS without it."))
    else:
        add(c, f"The mesh's outline differs from the held-out photos (mask IoU {c.value:.2f}; pass at "
               f"{c.pass_at}): check the masks and the hatched areas." if c and c.value is not None else "")
    c = by.get("heldout_psnr")
    if c and c.value is not None:
        add(c, f"Colours differ from the held-out photos ({c.value:.1f} dB; pass at {c.pass_at} dB): uneven "
               "light, reflections or wrong masks.")
    c = by.get("gt_fscore")
    if c and c.value is not None:
        add(c, f"The shape is off against the ground truth: F-score {c.value:.3f} (pass at {c.pass_at}).")
    c = by.get("self_intersections")
    if c and c.value is not None:
        add(c, f"{c.value:.1%} of the faces intersect other faces: repair the mesh before 3-D printing.")
    c = by.get("topology")
    if c and c.value is not None:
        add(c, f"The surface has {c.value:.0f} handles (tunnels through it; pass at {c.pass_at:.0f} or fewer): "
               "parts of it are torn into holes and bridges, which look shredded in the 3-D view. Photograph those "
               "parts more closely and from more directions, or give masks.")
    note = (stats.get("geometry") or {}).get("note")
    if note:
        # the coarse CPU result: as important as a warning, though no check measures it
        items.append((1, "warn", note[0].upper() + note[1:] if note else note))
    for c in grade.checks:
        if c.name.startswith("gate:"):
            add(c, f"Mesh check “{c.label.removeprefix('mesh: ')}”: {c.detail}.")
    masks = stats.get("masks") or {}
    if masks.get("auto"):
        where = (" in masks_preview.jpg; fix any in masks.zip, put them in the job's masks/ folder and submit again"
                 if {"masks_preview.jpg", "masks.zip"} <= published else "")
        items.append((0, "info", f"Masks were computed automatically for {masks['auto']} of "
                                 f"{(stats.get('cameras') or {}).get('views', '?')} photos: check them{where}."))
    unreg = ((stats.get("cameras") or {}).get("sfm") or {}).get("unregistered") or []
    if unreg:
        shown = ", ".join(unreg[:8]) + (f" and {len(unreg) - 8} more" if len(unreg) > 8 else "")
        items.append((0, "info", f"{len(unreg)} photo(s) could not be placed and were not used: {shown}."))
    items.sort(key=lambda t: -t[0])
    out = [{"level": lvl, "text": text} for _, lvl, text in items if text]
    if not any(i["level"] in ("fail", "warn") for i in out):
        out.insert(0, {"level": "pass", "text": "Nothing to act on: every check passed."})
    return out
