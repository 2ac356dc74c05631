"""Captum's own tests against the drop-ins of :mod:`fastattr.integrations.captum`.

Takes ``tests/`` of a Captum checkout at a pinned commit, runs the chosen test files once as they are
(against Captum) and once with the imports of the classes under test (and those of Captum's shared
test configuration, ``captum.testing.attr.helpers.test_config``) rewritten to
``fastattr.integrations.captum``, and writes a per-file summary as JSON. Nothing of Captum is kept:
the copies live in a temporary folder. Run through ``benchmarks/captum_suite.sh``.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

FILES = [
    "tests/attr/test_saliency.py",
    "tests/attr/test_input_x_gradient.py",
    "tests/attr/test_integrated_gradients_basic.py",
    "tests/attr/test_integrated_gradients_classification.py",
    "tests/attr/test_gradient_shap.py",
    "tests/attr/layer/test_layer_integrated_gradients.py",
    "tests/attr/layer/test_grad_cam.py",
    "tests/attr/test_guided_backprop.py",
    "tests/attr/test_guided_grad_cam.py",
    "tests/attr/test_occlusion.py",
    "tests/attr/test_feature_ablation.py",
    "tests/attr/test_targets.py",
    "tests/attr/test_hook_removal.py",
    "tests/metrics/test_infidelity.py",
    "tests/metrics/test_sensitivity.py",
]
# The classes whose own test files are run above: their imports are swapped wherever they appear.
SWAPPED = {"Saliency", "InputXGradient", "IntegratedGradients", "NoiseTunnel", "GradientShap",
           "LayerIntegratedGradients", "LayerGradCam", "GuidedBackprop", "GuidedGradCam", "Occlusion",
           "FeatureAblation"}
CONFIG = "captum.testing.attr.helpers.test_config"
LOCAL_CONFIG = "tests._fastattr_test_config"


def swap_imports(source: str) -> str:
    """``source`` with every ``from captum.attr... import X`` of a class in ``SWAPPED`` importing X
    from ``fastattr.integrations.captum`` instead, and the shared test configuration from its swapped
    copy."""
    lines = source.splitlines(keepends=True)
    edits = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if node.module == CONFIG:
            names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
            edits.append((node, f"from {LOCAL_CONFIG} import {names}\n"))
            continue
        if not (node.module == "captum.attr" or node.module.startswith("captum.attr.")):
            continue
        keep = [a for a in node.names if a.name not in SWAPPED]
        swap = [a for a in node.names if a.name in SWAPPED]
        if not swap:
            continue

        def spell(aliases):
            return ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in aliases)
        text = f"from fastattr.integrations.captum import {spell(swap)}\n"
        if keep:
            text = f"from {node.module} import {spell(keep)}\n" + text
        edits.append((node, text))
    for node, text in sorted(edits, key=lambda e: -e[0].lineno):
        lines[node.lineno - 1:node.end_lineno] = [text]
    return "".join(lines)


def export_tests(repo: Path, commit: str, into: Path) -> None:
    """``tests/`` of ``repo`` at ``commit`` extracted under ``into``."""
    archive = subprocess.run(["git", "--git-dir", str(repo), "archive", commit, "tests"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def installed_config() -> Path:
    spec = importlib.util.find_spec(CONFIG)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{CONFIG} is not importable: install captum")
    return Path(spec.origin)


def run_pytest(root: Path, junit: Path, timeout: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "pytest", *FILES, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           "-o", "junit_family=xunit1"]
    subprocess.run(cmd, cwd=root, env=env, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def outcomes(junit: Path) -> dict[str, dict[str, str]]:
    """Per test file, ``{test id: "passed" | "failed" | "skipped"}`` from a JUnit XML report."""
    result: dict[str, dict[str, str]] = {f: {} for f in FILES}
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = case.get("file") or case.get("classname", "").rsplit(".", 1)[0].replace(".", "/") + ".py"
        if path not in result:
            path = next((f for f in FILES if f.endswith(path)), path)
        kinds = {child.tag for child in case}
        state = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        result.setdefault(path, {})[f"{case.get('classname')}::{case.get('name')}"] = state
    return result


def counts(tests: dict[str, str]) -> dict[str, int]:
    values = list(tests.values())
    return {"passed": values.count("passed"), "failed": values.count("failed"),
            "skipped": values.count("skipped"), "total": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="Captum's git directory")
    parser.add_argument("--commit", required=True, help="the commit whose tests/ run")
    parser.add_argument("--out", required=True, help="the JSON summary to write")
    parser.add_argument("--failures", help="a text file listing the tests failing only with the drop-ins")
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args()
    repo = Path(args.repo)
    commit = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", args.commit], check=True,
                            capture_output=True, text=True).stdout.strip()
    results = {}
    with tempfile.TemporaryDirectory(prefix="captum_suite_") as tmp:
        for kind in ("captum", "fastattr"):
            root = Path(tmp) / kind
            root.mkdir()
            export_tests(repo, commit, root)
            if kind == "fastattr":
                config = root / (LOCAL_CONFIG.replace(".", "/") + ".py")
                config.write_text(swap_imports(installed_config().read_text()))
                for path in (root / "tests").rglob("*.py"):
                    text = path.read_text()
                    swapped = swap_imports(text)
                    if swapped != text:
                        path.write_text(swapped)
            junit = Path(tmp) / f"{kind}.xml"
            run_pytest(root, junit, args.timeout)
            results[kind] = outcomes(junit)
    import captum
    import torch
    import fastattr
    files = {}
    for f in FILES:
        a, b = counts(results["captum"].get(f, {})), counts(results["fastattr"].get(f, {}))
        files[f] = {"captum": a, "fastattr": b,
                    "ratio": round(b["passed"] / a["passed"], 4) if a["passed"] else None}
    total_a = {k: sum(v["captum"][k] for v in files.values()) for k in ("passed", "failed", "skipped", "total")}
    total_b = {k: sum(v["fastattr"][k] for v in files.values()) for k in ("passed", "failed", "skipped", "total")}
    summary = {
        "date": datetime.date.today().isoformat(),
        "captum_commit": commit,
        "versions": {"captum": captum.__version__, "torch": torch.__version__, "fastattr": fastattr.__version__,
                     "python": platform.python_version()},
        "swapped_classes": sorted(SWAPPED),
        "total": {"captum": total_a, "fastattr": total_b,
                  "ratio": round(total_b["passed"] / total_a["passed"], 4) if total_a["passed"] else None},
        "files": files,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    if args.failures:
        lines = [f"{test}\n" for f in FILES for test, state in sorted(results["fastattr"].get(f, {}).items())
                 if state == "failed" and results["captum"].get(f, {}).get(test) == "passed"]
        Path(args.failures).write_text("".join(lines))
    width = max(len(f) for f in FILES)
    print(f"{'file':<{width}}  captum  fastattr")
    for f, v in files.items():
        print(f"{f:<{width}}  {v['captum']['passed']:>3}/{v['captum']['total']:<3} "
              f"{v['fastattr']['passed']:>3}/{v['fastattr']['total']:<3}")
    print(f"{'total':<{width}}  {total_a['passed']:>3}/{total_a['total']:<3} "
          f"{total_b['passed']:>3}/{total_b['total']:<3}  ratio {summary['total']['ratio']}")


if __name__ == "__main__":
    main()
