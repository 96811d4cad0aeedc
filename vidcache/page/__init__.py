"""The report page of a folder of videos (``vidcache report``): ``build`` reads, compares and writes it.

folder.py reads what a folder holds, compare.py pairs videos with a reference run's and measures how far
apart they are, images.py makes the posters and heat strips, build.py puts the page together from
page.html, page.css and page.js.
"""

from __future__ import annotations

from .build import Built, build

__all__ = ["Built", "build"]
