"""Structure the code and docs keep: no links outside the repository, evaluation apart from the trainer, one owner
for checkpoint keys, unit tests that start no programs."""

from tests.conftest import REPO


def test_the_docs_link_nothing_outside_the_repository():
    """A clone holds the repository alone: links to ../shared or other checkouts lead nowhere for its readers."""
    import re

    for name in ("README.md", "ARCHITECTURE.md", "docs/benchmarks.md"):
        text = (REPO / name).read_text()
        outside = re.findall(r"(?:\]\(|`)\.\./[^)`\s]*", text)
        assert not outside, f"{name} links outside the repository: {outside}"


def test_evaluation_imports_no_trainer_module():
    """Evaluation samples through the models' own contract (gand.models.Sampling) and reads checkpoints through
    gand.checkpoint.contents: it runs without the trainer."""
    offenders = [
        f"{path.name}: {name}"
        for path in sorted((REPO / "gand" / "eval").glob("*.py"))
        for name in _imported_names(path)
        if name.startswith("gand.train")
    ]
    assert not offenders, offenders


def _imported_names(path) -> list[str]:
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_unit_tests_start_no_programs():
    """`make test-fast` stays fast: processes, gand's command line and external tools are integration tests."""
    offenders = [
        f"{path.name}: {name}"
        for path in sorted((REPO / "tests" / "unit").glob("*.py"))
        for name in _imported_names(path)
        if name in ("subprocess", "multiprocessing", "pty") or name.startswith("tests.integration")
    ]
    assert not offenders, offenders


def test_checkpoint_keys_are_named_in_one_place():
    """What a checkpoint holds is spelled out in gand/checkpoint/contents.py alone: a new piece of state, or a key
    renamed, is a change there (and in gand/train/snapshot.py's parts), not a hunt for string literals."""
    import ast

    keys = {"generator_ema", "fixed_noise", "fixed_classes", "tracking_run_ids", "class_names", "num_classes"}
    owner = REPO / "gand" / "checkpoint" / "contents.py"
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}"
        for path in sorted((REPO / "gand").rglob("*.py"))
        if path != owner
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in keys
    ]
    assert not offenders, offenders
