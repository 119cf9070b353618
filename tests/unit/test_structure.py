"""Structure the code and docs keep: no links outside the repository, evaluation apart from the trainer."""

from tests.conftest import REPO


def test_the_docs_link_nothing_outside_the_repository():
    """A clone holds the repository alone: links to ../shared or other checkouts lead nowhere for its readers."""
    import re

    for name in ("README.md", "ARCHITECTURE.md", "docs/benchmarks.md"):
        text = (REPO / name).read_text()
        outside = re.findall(r"(?:\]\(|`)\.\./[^)`\s]*", text)
        assert not outside, f"{name} links outside the repository: {outside}"


def test_evaluation_imports_no_trainer_module():
    """Evaluation samples through the models' own contract (gand.models.Sampling): it runs without the trainer."""
    import ast

    offenders = []
    for path in sorted((REPO / "gand" / "eval").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            )  # fmt: skip
            offenders += [f"{path.name}: {name}" for name in names if name.startswith("gand.train")]
    assert not offenders, offenders
