"""README.md stays true: every node parameter, topic and `sam-mmseg` subcommand is documented,
and the two commands it gives exist in the Makefile and CI."""

from pathlib import Path

from sam_mmseg_ros.cli import SUBCOMMANDS
from sam_mmseg_ros.contracts import INPUT_TOPICS
from sam_mmseg_ros.settings import SETTINGS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_node_parameter_is_documented():
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in README]
    assert not missing, f"parameters missing from README.md: {missing}"


def test_topics_and_subcommands_are_documented():
    outputs = ["labels", "color", "overlay", "painted_points", "modality_health"]
    topics = list(INPUT_TOPICS.values()) + [f"~/output/{o}" for o in outputs] + ["/diagnostics"]
    assert not [t for t in topics if f"`{t}`" not in README]
    assert not [c for c in SUBCOMMANDS if f"sam-mmseg {c}" not in README]


def test_the_two_commands_exist():
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
