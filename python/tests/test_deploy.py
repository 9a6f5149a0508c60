"""The Kubernetes manifests in deploy/kubernetes: they parse, their Services and budgets select
the pods they mean, and every flag they give `kiln` is one `kiln` has (read from its --help)."""

import os
import pathlib
import re
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))


def documents():
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


def kiln_flags(command):
    binary = pathlib.Path(os.environ.get("KILN_BIN", REPO / ".build" / "debug" / "kiln"))
    if not binary.exists():
        pytest.skip(f"no kiln binary at {binary}: build it (swift build --product kiln)")
    text = subprocess.run([str(binary), command, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))


def test_the_manifests_parse_and_hold_the_server_and_its_workers():
    kinds = {(document["kind"], document["metadata"]["name"]) for _, document in documents()}
    for expected in [("Deployment", "kiln-server"), ("Service", "kiln"), ("PodDisruptionBudget", "kiln-server"),
                     ("ConfigMap", "kiln-server"), ("Deployment", "kiln-worker-h100"), ("Role", "kiln-fleet")]:
        assert expected in kinds, f"{expected} is missing from deploy/kubernetes"


def test_services_and_budgets_select_the_server_pods():
    docs = [document for _, document in documents()]
    server = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "kiln-server")
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert server["spec"]["replicas"] >= 3
    for document in docs:
        if document["kind"] == "Service":
            assert document["spec"]["selector"].items() <= labels.items()
        if document["kind"] == "PodDisruptionBudget":
            assert document["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert yaml.safe_load(config["data"]["kiln.yaml"])["replicas"]["enabled"] is True


def test_every_flag_given_to_kiln_is_one_it_has():
    checked = 0
    for name, document in documents():
        if document["kind"] != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            command, *arguments = container["args"]
            flags = kiln_flags(command)
            for argument in arguments:
                flag = argument.split("=", 1)[0]
                assert flag in flags, f"{name}: kiln {command} has no {flag}"
                checked += 1
    assert checked >= 10
