"""The offline render writes the script of every remote command, the cache
regeneration's trust steps included (they hang on the BfCache component, not
on a HostFiles one), under the host it runs on."""
from __future__ import annotations


def test_every_remote_command_has_its_script(every_feature_run, rendered_every_feature):
    tree = rendered_every_feature
    commands = every_feature_run.of_type("command:remote:Command")
    scripts = {p.stem: p for p in tree.glob("*/.commands/*.sh") if p.parent.parent.name != "local"}
    assert sorted(scripts) == sorted(c.name for c in commands)
    trust = [c for c in commands if "-bfcache-trust-" in c.name]
    assert trust, "the regeneration's trust steps exist"
    for c in trust:
        host = c.name.split("-bfcache-trust-")[1]
        assert scripts[c.name].parent.parent.name == f"prod-{host}"
        assert scripts[c.name].read_text() == c.inputs["stdin"]
