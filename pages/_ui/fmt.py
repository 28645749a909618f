"""Numbers for people, and people's text for the renderer that shows it.

Every number the pages print that comes from a user's data (kernel weights, sums, gains) or
spans orders of magnitude (milliseconds from 0.01 to 100,000) goes through here, so that a
weight of 1e300 reads ``1.00e+300`` instead of 301 digits, and 0.00002 ms is not "0.00 ms".
Sizes are decimal (SI), like megapixels: 1 MB = 10**6 bytes, 1 MP = 10**6 pixels.

Text a user chose (an uploaded file's name) is escaped for where it goes: Streamlit markdown
(``md``: a name with ``$5 and $10`` is not math), a Graphviz label (``dot``) and a matplotlib
title (``mpl``).
"""

from __future__ import annotations

import math

#: Fixed notation from 10**LOW to just under 10**HIGH; scientific outside.
LOW, HIGH = -3, 6


def sig(x: float, digits: int = 3, *, trim: bool = False) -> str:
    """``x`` with ``digits`` significant digits.

    Fixed notation for 0.001 <= |x| < 1,000,000 (no thousands separators; whole numbers keep
    all their digits), scientific otherwise. ``trim`` drops trailing zeros (a weight of 2 reads
    ``2``; without it a gain reads ``1.00``).

    >>> [sig(v) for v in (1.0, 0.99673, 1234.6, 0.000123, 9e300, 0.0, -0.5)]
    ['1.00', '0.997', '1235', '1.23e-04', '9.00e+300', '0', '-0.500']
    >>> sig(0.9999999999999998), sig(9.996, 3), sig(16.0, trim=True), sig(1e300, 2, trim=True)
    ('1.00', '10.0', '16', '1e+300')
    """
    x = float(x)
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    e = math.floor(math.log10(abs(x)))
    r = round(x, digits - 1 - e)
    if r != 0:
        e = math.floor(math.log10(abs(r)))  # rounding may carry: 9.996 -> 10.0
    if LOW <= e < HIGH:
        s = f"{x:.0f}" if e >= digits - 1 else f"{r:.{digits - 1 - e}f}"
        if trim and "." in s:
            s = s.rstrip("0").rstrip(".")
        return s
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    if trim and "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


def ms(seconds: float, digits: int = 3) -> str:
    """A duration in milliseconds with significant digits: ``0.0213 ms``, ``12.3 ms``, ``1234 ms``.

    >>> ms(0.0123456), ms(2.1e-5), ms(1.2346)
    ('12.3 ms', '0.0210 ms', '1235 ms')
    """
    return f"{sig(seconds * 1e3, digits)} ms"


def duration(seconds: float) -> str:
    """A duration as a person says it: ``0.4 s``, ``12 s``, ``2 min 17 s``, ``1 h 5 min``.

    >>> [duration(s) for s in (0.04, 0.43, 12.4, 137, 3900)]
    ['0.04 s', '0.4 s', '12 s', '2 min 17 s', '1 h 5 min']
    """
    if seconds < 0.1:
        return f"{sig(seconds, 1, trim=True)} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def nbytes(n: int) -> str:
    """A size in bytes with decimal units: ``70 B``, ``1.50 kB``, ``50.3 MB``.

    >>> [nbytes(n) for n in (0, 70, 999, 1500, 512 * 512 * 3, 4096 * 4096 * 3, 2 * 10**9)]
    ['0 B', '70 B', '999 B', '1.50 kB', '786 kB', '50.3 MB', '2.00 GB']
    """
    n = int(n)
    if abs(n) < 1000:
        return f"{n} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if abs(n) < 1000 * scale or unit == "GB":
            return f"{sig(n / scale)} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


#: Characters that mean something inside a line of Streamlit markdown: emphasis, code, links,
#: math ($), strikethrough (~), tables (|), HTML and autolinks (< > &), and the escape itself.
MARKDOWN_SPECIALS = "\\`*_[]$~|<>&"


def md(text: str) -> str:
    r"""``text`` as literal Streamlit markdown: each special character backslash-escaped.

    >>> print(md('cost $5 and "$10"_[1]*.png'))
    cost \$5 and "\$10"\_\[1\]\*.png
    >>> md("plain-name.png")
    'plain-name.png'
    """
    return "".join("\\" + ch if ch in MARKDOWN_SPECIALS else ch for ch in str(text))


def dot(text: str) -> str:
    r"""``text`` inside a double-quoted Graphviz string: backslash and quote escaped, line breaks
    as spaces (in a label, ``\n`` would break the line).

    >>> print(dot('a "b" \\ c'))
    a \"b\" \\ c
    """
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def mpl(text: str) -> str:
    r"""``text`` as a matplotlib title: ``$`` escaped, so that two of them are not mathtext (which
    fails to draw on most file names: the figure would not save).

    >>> print(mpl("cost $5 and $10.png"))
    cost \$5 and \$10.png
    """
    return str(text).replace("$", "\\$")
