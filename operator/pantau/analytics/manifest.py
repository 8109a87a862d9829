"""The analytics settings of a Camera manifest file, for `pantau analyse`.

The product may not import a YAML library (import rule `product-without-dev`), so this reads the
block-style subset of YAML that Camera manifests are written in: nested mappings, `- ` lists, flow
lists and mappings (`[0.1, 0.2]`, `{a: 1}`), quoted and plain scalars, comments, and the first of
several documents. Anchors, tags, multi-line scalars and the like are refused with a message that
says to convert the file (JSON is accepted as it is: `kubectl ... -o json`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pantau.analytics.engine import LineRule, ZoneRule


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class CameraAnalyticsSpec:
    name: str
    zones: tuple[ZoneRule, ...]
    lines: tuple[LineRule, ...]
    classes: frozenset[str] | None  # spec.detection.classes
    min_score: float | None  # spec.detection.minScore
    fps: float | None  # spec.sampling.fps


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_UNSUPPORTED = ("&", "*", "!", "|", ">", "%", "@", "`")


def _scalar(text: str) -> Any:
    text = text.strip()
    if text[:1] in ("'", '"'):
        if len(text) < 2 or text[-1] != text[0]:
            raise ManifestError(f"unterminated string: {text}")
        return json.loads(text) if text[0] == '"' else text[1:-1].replace("''", "'")
    if text[:1] in _UNSUPPORTED:
        raise ManifestError(f"unsupported YAML ({text[:20]!r}): convert the file to JSON")
    if _NUMBER.match(text):
        return float(text) if re.search(r"[.eE]", text) else int(text)
    return {"true": True, "false": False, "null": None, "~": None, "": None}.get(text, text)


def _flow(text: str) -> Any:
    """A flow collection: `[...]` or `{...}` with plain or quoted scalars."""
    # A colon is an indicator only before a space or the end (`url: http://x` has one).
    after = r"[\s,\]}]|$"
    tokens = re.findall(
        rf"\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'|[\[\]{{}},]|:(?={after})|(?:[^\[\]{{}},:]|:(?!{after}))+",
        text,
    )
    tokens = [t for t in tokens if t.strip()]
    value, rest = _flow_value(tokens)
    if rest:
        raise ManifestError(f"unexpected {''.join(rest)!r} after {text!r}")
    return value


def _flow_value(tokens: list[str]) -> tuple[Any, list[str]]:
    if not tokens:
        raise ManifestError("unexpected end of a flow collection")
    head, rest = tokens[0], tokens[1:]
    if head not in ("[", "{"):
        return _scalar(head), rest
    close = "]" if head == "[" else "}"
    items: list[Any] = []
    mapping: dict[str, Any] = {}
    while rest and rest[0] != close:
        value, rest = _flow_value(rest)
        if head == "{":
            if not rest or rest[0] != ":":
                raise ManifestError("a flow mapping needs `key: value` pairs")
            mapping[str(value)], rest = _flow_value(rest[1:])
        else:
            items.append(value)
        if rest and rest[0] == ",":
            rest = rest[1:]
    if not rest:
        raise ManifestError(f"missing {close!r}")
    return (items if head == "[" else mapping), rest[1:]


def _value(text: str) -> Any:
    text = text.strip()
    return _flow(text) if text[:1] in ("[", "{") else _scalar(text)


def _lines(text: str) -> list[list[Any]]:
    """[indent, content] of each meaningful line of the first document, comments removed."""
    out: list[list[Any]] = []
    for raw in text.splitlines():
        if raw.strip() == "---":
            if out:
                break
            continue
        line = re.sub(r"(^|\s)#.*$", "", raw.rstrip()) if "#" in raw else raw.rstrip()
        if line.strip():
            if "\t" in line[: len(line) - len(line.lstrip())]:
                raise ManifestError("tabs in indentation are not YAML")
            out.append([len(line) - len(line.lstrip()), line.strip()])
    return out


def _block(lines: list[list[Any]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("-") and lines[i][1][:2] in ("- ", "-"):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[list[Any]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1][:2] in ("- ", "-"):
        rest = lines[i][1][1:].lstrip()
        if not rest:
            if i + 1 < len(lines) and lines[i + 1][0] > indent:
                value, i = _block(lines, i + 1, lines[i + 1][0])
            else:
                value, i = None, i + 1
        elif re.match(r"^[^\[{'\"][^:]*:(\s|$)", rest) or rest.startswith("- "):
            # "- key: value": a mapping (or list) whose first line starts after the dash.
            lines[i] = [indent + len(lines[i][1]) - len(rest), rest]
            value, i = _block(lines, i, lines[i][0])
        else:
            value, i = _value(rest), i + 1
        items.append(value)
    return items, i


def _mapping(lines: list[list[Any]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        match = re.match(r"^(\"[^\"]*\"|'[^']*'|[^:]+?):(\s+(.*))?$", lines[i][1])
        if match is None:
            raise ManifestError(f"expected `key: value`, got {lines[i][1]!r}")
        key, text = str(_scalar(match.group(1))), (match.group(3) or "").strip()
        i += 1
        if text:
            result[key] = _value(text)
        elif i < len(lines) and (
            lines[i][0] > indent or (lines[i][0] == indent and lines[i][1][:2] in ("- ", "-"))
        ):
            result[key], i = _block(lines, i, lines[i][0])
        else:
            result[key] = None
    return result, i


def parse_yaml(text: str) -> Any:
    """The first document of a block-style YAML file (or a JSON one)."""
    if text.lstrip().startswith("{"):
        return json.loads(text)
    lines = _lines(text)
    if not lines:
        return None
    value, i = _block(lines, 0, lines[0][0])
    if i != len(lines):
        raise ManifestError(f"cannot read the line {lines[i][1]!r} (indentation?)")
    return value


def _point(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)):
        raise ManifestError(f"{where}: a point is [x, y] with numbers between 0 and 1")
    x, y = (float(v) for v in value)
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise ManifestError(f"{where}: coordinates are normalised, between 0 and 1")
    return (x, y)


def _classes(value: Any, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{where}.classes: a list of class names")
    return frozenset(value)


def analytics_spec(manifest: Any) -> CameraAnalyticsSpec:
    """Zones, lines, detection classes and minimum score, sampling rate of a Camera manifest."""
    if not isinstance(manifest, dict) or manifest.get("kind") not in ("Camera", None):
        raise ManifestError("not a Camera manifest")
    spec = manifest.get("spec") or {}
    zones = []
    for n, z in enumerate(spec.get("zones") or []):
        where = f"spec.zones[{n}]"
        points = tuple(_point(p, f"{where}.points") for p in z.get("points") or [])
        if len(points) < 3:
            raise ManifestError(f"{where}: a zone needs at least 3 points")
        loiter = z.get("loiterSeconds")
        zones.append(
            ZoneRule(
                str(z["name"]),
                points,
                _classes(z.get("classes"), where),
                None if loiter is None else float(loiter),
            )
        )
    lines = [
        LineRule(
            str(li["name"]),
            _point(li.get("start"), f"spec.lines[{n}].start"),
            _point(li.get("end"), f"spec.lines[{n}].end"),
            _classes(li.get("classes"), f"spec.lines[{n}]"),
        )
        for n, li in enumerate(spec.get("lines") or [])
    ]
    detection = spec.get("detection") or {}
    score = detection.get("minScore")
    fps = (spec.get("sampling") or {}).get("fps")
    return CameraAnalyticsSpec(
        name=str((manifest.get("metadata") or {}).get("name", "camera")),
        zones=tuple(zones),
        lines=tuple(lines),
        classes=_classes(detection.get("classes"), "spec.detection"),
        min_score=None if score is None else float(score),
        fps=None if fps is None else float(fps),
    )


def load_camera(path: Path) -> CameraAnalyticsSpec:
    try:
        return analytics_spec(parse_yaml(path.read_text()))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable Camera manifest ({exc})") from exc
