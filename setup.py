"""Packaging beyond what pyproject.toml can say: the presets live in the top-level ``presets/``
folder of the repository and ship inside the wheel as ``vidcache/presets/*.toml``
(``vidcache.presets.PRESET_DIR`` finds them in either place)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["vidcache", "vidcache.*"]) + ["vidcache.presets"],
    package_dir={"vidcache.presets": "presets"},
    package_data={"vidcache": ["assets/**/*"], "vidcache.presets": ["*.toml"],
                  "vidcache.page": ["*.html", "*.css", "*.js"]},  # the report page's template
)
