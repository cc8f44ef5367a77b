"""Number, time and value formatting for the report templates (and the portal)."""
import datetime
import json
import math

from django import template

register = template.Library()


@register.filter
def num(value, digits: int = 4):
    """A measurement with `digits` significant digits; integers with thousands separators; '—' when missing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "—"
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e6):
        return f"{number:.{max(1, int(digits) - 1)}e}"
    return f"{number:.{int(digits)}g}"


@register.filter
def setting(value):
    """A settings value as text: lists joined, nested documents as JSON, numbers via `num`."""
    if isinstance(value, list | tuple):
        return ", ".join(setting(item) for item in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "none"
    if isinstance(value, str):
        return value or "—"
    return num(value)


@register.filter
def utc(moment):
    """A time as 'YYYY-MM-DD HH:MM:SS UTC' whatever the server's time zone."""
    if not isinstance(moment, datetime.datetime):
        return "—"
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@register.filter
def verdict(passed):
    if passed is None:
        return "—"
    return "PASS" if passed else "FAIL"


@register.filter
def label(key: str):
    """'kl_mean_max' -> 'kl mean max'."""
    return str(key).replace("_", " ")


@register.filter
def size_bytes(value):
    """A size as '3,865,470,976 bytes (3.6 GiB)'; '—' when missing."""
    if value is None or isinstance(value, bool):
        return "—"
    size = float(value)
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if size >= scale:
            return f"{int(value):,} bytes ({size / scale:.3g} {unit})"
    return f"{int(value):,} bytes"


@register.filter
def percent(value, digits: int = 3):
    """A ratio as a percentage with `digits` significant digits: 0.2669 -> '26.7 %'."""
    if value is None or isinstance(value, bool):
        return "—"
    return f"{float(value) * 100:.{int(digits)}g} %"
