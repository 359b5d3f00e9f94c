"""HTML rendering shared by the red team, the risk assessment and the evidence report (stable).

Pages are self-contained: inline CSS and SVG or embedded PNG, no script, no network, printable.
"""

from modelshield.reports._html import bars_svg, esc, page, png_img, table

__all__ = ["bars_svg", "esc", "page", "png_img", "table"]
