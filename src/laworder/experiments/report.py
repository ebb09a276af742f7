"""``laworder report RUN_DIR``: rebuild an experiment's ``report.md``, ``report.html`` and
``figures/`` from its JSON.

Everything comes from ``results.json`` (and the sub-run folders it names): the tables in the
paper's layout, the figures (training curves, dose-response curve, qualitative grids, ORDER
gate values, LAW weight-map snapshots) and, at the top, the command and config that made
every number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from laworder.errors import DataError
from laworder.experiments.base import CONFIG, RESULTS
from laworder.experiments.kinds import EXPERIMENTS

REPORT = "report.md"
REPORT_HTML = "report.html"
HTML_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}th{background:#eef}
tr:nth-child(even) td{background:#fafafa}img{max-width:100%}pre{background:#f5f5f5;padding:.8em;overflow-x:auto}
code{background:#f5f5f5}
"""


def markdown_page(text: str, title: str) -> str:
    """A markdown report as one HTML page (python-markdown: tables, fenced code); images and links
    stay relative, so the page shows the ``figures/`` beside it with no network and no server."""
    import html

    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def read_results(run_dir: str | os.PathLike) -> dict:
    """An experiment folder's ``results.json``.

    Raises:
        DataError: the folder holds no finished experiment.
    """
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise DataError(f"{run_dir} holds no {RESULTS}: not a finished `laworder exp run` folder")
    from laworder.config import read_json_file

    record = read_json_file(path, RESULTS)
    kind = record.get("kind")
    if not isinstance(kind, str) or kind not in EXPERIMENTS.names():
        raise DataError(f"{path}: malformed {RESULTS}: \"kind\" is {kind!r}; expected one of "
                        f"{', '.join(EXPERIMENTS.names())}")
    if not isinstance(record.get("results"), (dict, list)):
        raise DataError(f"{path}: malformed {RESULTS}: no \"results\" entry")
    return record


def _provenance(record: dict) -> list[str]:
    env = record.get("environment", {})
    lines = [
        f"Made by: `{record['command']}`",
        f"Config: `{CONFIG}` in this folder (resolved, kind `{record['kind']}`)"
        + (f", from `{record['config_file']}`" if record.get("config_file") else "")
        + (f", overrides `{json.dumps(record['overrides'])}`" if record.get("overrides") else ""),
        f"Started {record.get('started', '?')}, {record.get('seconds', 0):.0f} s; laworder {env.get('laworder', '?')}"
        + (f" (commit {env['git_commit'][:10]})" if env.get("git_commit") else "")
        + f", torch {env.get('torch', '?')}, {env.get('platform', '?')}, {env.get('threads', '?')} threads.",
    ]
    description = record.get("config", {}).get("description")
    return ([description, ""] if description else []) + lines


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.md``, the same as ``report.html`` (tables and figures) and ``figures/*.png``
    for an experiment folder; returns the markdown report's path."""
    run_dir = Path(run_dir)
    record = read_results(run_dir)
    experiment = EXPERIMENTS.create(record["kind"])
    results = record["results"]
    figure_dir = run_dir / "figures"
    try:  # a hand-edited or truncated results.json is one line naming it, not a KeyError
        lines = [f"# {record.get('title') or experiment.title}", "", *_provenance(record), "", "## Results", ""]
        lines += experiment.tables(results)
        config_text = yaml.safe_dump(record["config"], sort_keys=False).rstrip()
        figures = experiment.figures(results, run_dir, figure_dir)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{run_dir / RESULTS}: malformed {RESULTS}: the {record['kind']} results do not read "
                        f"({type(exc).__name__}: {exc}); rerun the experiment (`laworder exp run ... --resume`)") from None
    if figures:
        lines += ["", "## Figures"]
        for caption, path in figures:
            lines += ["", f"![{caption}]({Path(path).relative_to(run_dir).as_posix()})", "", f"*{caption}*"]
    lines += ["", "## Config", "", "```yaml", config_text, "```",
              "", f"Raw numbers: `{RESULTS}`.", ""]
    path = run_dir / REPORT
    path.write_text("\n".join(lines))
    (run_dir / REPORT_HTML).write_text(markdown_page("\n".join(lines), lines[0].lstrip("# ")), encoding="utf-8")
    return path
