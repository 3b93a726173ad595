"""How results print: one place for number formatting and HTML tables.

Every repr, table and dashboard label shows a value the same way.
"""

from __future__ import annotations

import html
import math

__all__ = ["html_table", "number", "short"]


def number(x, digits: int = 6) -> str:
    """``x`` with ``digits`` significant digits.

    ``nan``, ``inf``, ``-inf`` are spelled out (``None`` prints as ``nan``) and ``-0`` is
    printed as ``0``.

    Args:
        x: A real number (anything ``float()`` accepts) or None.
        digits: The number of significant digits (``%g`` format).

    Returns:
        The formatted string.

    Raises:
        TypeError: if ``float(x)`` refuses ``x`` (``ValueError`` for a non-numeric string).

    Examples:
        >>> number(3.14159265), number(float("nan")), number(-0.0), number(2.0, digits=3)
        ('3.14159', 'nan', '0', '2')
    """
    if x is None:
        return "nan"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x + 0.0:.{digits}g}"


def short(x) -> str:
    """:func:`number` with 4 significant digits (landscape and barrier tables).

    Args:
        x: A real number or None.

    Returns:
        The formatted string.

    Examples:
        >>> short(0.123456)
        '0.1235'
    """
    return number(x, 4)


def html_table(header: list, rows: list[list], caption: str = "") -> str:
    """An HTML ``<table>`` with every cell escaped (what ``_repr_html_`` returns).

    Args:
        header: The column titles (converted with ``str``).
        rows: The rows, each a list of cells (converted with ``str``).
        caption: A ``<caption>``; none when empty.

    Returns:
        The HTML string.

    Examples:
        >>> html_table(["a"], [["<b>"]])
        '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
    """
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
