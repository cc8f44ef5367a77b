"""Measured values as the admin prints them: rounded to what their standard error supports."""
import math

from reports.templatetags.report_format import num

MAX_DECIMALS = 8


def _decimals_for(stderr: float, default: int = 4) -> int:
    """Decimals that keep two significant digits of the standard error."""
    if not math.isfinite(stderr) or stderr <= 0:
        return default
    return min(MAX_DECIMALS, max(0, 1 - math.floor(math.log10(stderr))))


def with_uncertainty(value, stderr=None, *, unit: str = "", signed: bool = False) -> str:
    """0.81234, 0.0412 -> '0.812 ± 0.041'; 1.234e-4, 2.1e-6 -> '(1.234 ± 0.021)e-4'; without a stderr, 4 significant
    digits; '—' when missing."""
    if value is None:
        return "—"
    value = float(value)
    sign = "+" if signed else ""
    if stderr is None or not math.isfinite(float(stderr)):
        text = num(value)
        return f"{'+' if signed and value > 0 else ''}{text}{unit}"
    stderr = float(stderr)
    if stderr == 0:  # nothing varied (every bootstrap sample agreed): the value as measured
        return f"{value:{sign}.4g} ± 0{unit}"
    if value != 0 and abs(value) < 1e-3:
        exponent = math.floor(math.log10(abs(value)))
        scale = 10.0 ** -exponent
        decimals = _decimals_for(stderr * scale)
        return f"({value * scale:{sign}.{decimals}f} ± {stderr * scale:.{decimals}f})e{exponent}{unit}"
    decimals = _decimals_for(stderr)
    return f"{value:{sign}.{decimals}f} ± {stderr:.{decimals}f}{unit}"


def significant(value, digits: int = 3) -> str:
    """A value to `digits` significant digits in plain decimals from 1e-6 to 1e6 (a column of percentiles or layer
    errors reads alike: 0.000346 beside 0.0123, not 3.46e-04), scientific beyond; '—' when missing."""
    if value is None:
        return "—"
    number = float(value)
    if number == 0 or not math.isfinite(number) or not 1e-6 <= abs(number) < 1e6:
        return num(number, digits)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(number))))
    return f"{number:.{decimals}f}"
