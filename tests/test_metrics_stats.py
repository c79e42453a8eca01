"""The proxies' Envoy stats config (`meshway.xds.bootstrap.build_stats_config`): every tag extractor is
anchored to a labelled stat family, so Envoy runs it only on that family's stats; every Istio label
is still extracted from real stat names (tests/data/envoy_stat_names.txt, captured from Envoy 1.40
running meshway's config) exactly as the old unanchored extractors did; the inclusion list keeps
what meshway reads and drops the rest; and a real Envoy tags a waypoint's stats that way."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from meshway.ca import CertificateAuthority, build_secrets
from meshway.observe.metrics import parse_samples
from meshway.runtime.envoy_admin import AdminError, fetch_admin
from meshway.xds import protos as P
from meshway.xds.bootstrap import ISTIO_SERIES, STATS_INCLUSIONS, build_bootstrap, build_stats_config
from meshway.xds.stat_tags import FAMILIES, FAMILY_TAGS, TAGS, build_stat_name, build_stats_tags
from meshway.xds.validate import build_static_bootstrap
from xds_support import BOOKINFO, ENVOY, GOLDEN, TRAFFIC, build_store, translate

DATA = Path(__file__).parent / "data"
NAMES = [tuple(line.split(" ", 1)) for line in (DATA / "envoy_stat_names.txt").read_text().splitlines()
         if line and not line.startswith("#")]
REVIEWS = "reviews.default.svc.cluster.local"
LEGACY = [{"tag_name": t, "regex": rf"\.({t}=\.=(.*?);\.)"} for t in TAGS]  # before anchoring


# -- Envoy's rules, in Python ----------------------------------------------------------------------
def envoy_prefix(regex: str) -> str:
    """Envoy's TagExtractorImplBase::extractRegexPrefix: `^alnum_or_underscore` then `\\.` (or
    `(?=\\.)`, or `$` last) gives the first token the extractor is indexed by; else no prefix."""
    if not regex.startswith("^"):
        return ""
    for i in range(1, len(regex)):
        if not (regex[i].isalnum() or regex[i] == "_"):
            last = i == len(regex) - 1
            dot = regex[i:].startswith("\\.") or regex[i:].startswith("(?=\\.)")
            return regex[1:i] if i > 1 and ((not last and dot) or (last and regex[i] == "$")) else ""
    return ""


def extract(tags: list[dict[str, str]], name: str) -> tuple[dict[str, str], str]:
    """Envoy 1.40's TagProducerImpl for custom extractors: those without a prefix, and those whose
    prefix is the name's first token, each search the whole name; the first groups are removed."""
    token = name.split(".", 1)[0]
    values, removed = {}, set()
    for spec in tags:
        prefix = envoy_prefix(spec["regex"])
        if prefix and prefix != token:
            continue
        m = re.search(spec["regex"], name)
        if m:
            values[spec["tag_name"]] = m.group(2)
            removed |= set(range(*m.span(1)))
    return values, "".join(c for i, c in enumerate(name) if i not in removed)


def included(name: str) -> bool:
    """Envoy's StatsMatcher inclusion list (StringMatcher: safe_regex is a full match)."""
    for pattern in STATS_INCLUSIONS:
        (kind, value), = pattern.items()
        if (kind == "prefix" and name.startswith(value)) or (kind == "suffix" and name.endswith(value)) \
                or (kind == "contains" and value in name) \
                or (kind == "safe_regex" and re.fullmatch(value["regex"], name)):
            return True
    return False


# -- extractors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("node_type", [None, "waypoint", "ztunnel"])
def test_every_tag_regex_is_anchored_to_a_labelled_family(node_type: str | None) -> None:
    tags = build_stats_tags(node_type)
    assert tags
    for spec in tags:
        prefix = envoy_prefix(spec["regex"])
        assert prefix in FAMILIES and spec["regex"].startswith(f"^{prefix}\\."), spec
        re.compile(spec["regex"])
    assert all(envoy_prefix(t["regex"]) == "" for t in LEGACY)  # what made every stat pay for them


def test_prefix_rule_matches_envoys_own_extractors() -> None:
    assert envoy_prefix(r"^cluster\.((.+?)\.)") == "cluster"  # envoy.cluster_name
    assert envoy_prefix(r"^connection_limit\.((.*?)\.)") == "connection_limit"
    assert envoy_prefix(r"_rq(_(\d{3}))$") == "" and envoy_prefix(r"^(?:cluster|tcp)\.") == ""


def test_each_label_is_extracted_from_real_stat_names_as_before() -> None:
    seen = set()
    for node_type, name in NAMES:
        expected = dict(re.findall(r"\.([a-z_]+)=\.=([^;]*);", name))
        tags, rest = extract(build_stats_tags(node_type), name)
        assert tags == expected, name
        assert "=.=" not in rest and rest.startswith(name.split(".", 1)[0] + "."), rest
        assert extract(LEGACY, name) == (tags, rest)  # the same tags and tag-extracted name as the old config
        seen |= set(tags)
    assert seen == set(TAGS)


def test_proxy_kinds_get_the_labels_their_stat_names_carry() -> None:
    for node_type, name in NAMES:
        family = name.split(".", 1)[0]
        labels = set(re.findall(r"\.([a-z_]+)=\.=", name))
        assert labels <= set(FAMILY_TAGS[node_type][family]), (node_type, family, labels)
    assert len(build_stats_tags("waypoint")) == 6  # was 15 regexes on every stat
    assert {t["tag_name"] for t in build_stats_tags(None)} == set(TAGS)


def test_label_names_do_not_match_inside_longer_ones() -> None:
    name = "cluster." + build_stat_name("c", {"destination_canonical_service": "reviews"}) + ".upstream_cx_total"
    tags, _ = extract(build_stats_tags(), name)
    assert tags == {"destination_canonical_service": "reviews"}


# -- inclusion list -------------------------------------------------------------------------------
def test_inclusion_list_keeps_the_istio_series_and_what_meshway_reads() -> None:
    kept = [name for _, name in NAMES if included(name)]
    assert kept == [name for _, name in NAMES]  # captured with the list: every labelled stat it made
    for name in ("server.state", "server.live", "listener_manager.listener_in_place_updated",
                 "listener_manager.total_listeners_active", "cluster_manager.cds.update_success",
                 "control_plane.connected_state", "cluster.xds-grpc.upstream_cx_total",
                 "http.inbound-vip|9080|http|reviews.rbac.allowed", "tcp.rbac.denied",
                 "http.inbound-vip|9080|http|reviews.rbac.istio_dry_run_deny_.shadow_denied",
                 "http.inbound-vip|9080|http|reviews.ext_authz.denied", "http.x.ext_authz.ok",
                 "http.x.local_rate_limit_svc.http_local_rate_limit.rate_limited"):
        assert included(name), name
    labelled = "cluster." + build_stat_name("inbound-vip|9080|http|r", {"reporter": "waypoint"})
    for suffix in ("upstream_rq_200", "upstream_rq_total", "upstream_rq_time", "upstream_rq_body_size",
                   "upstream_rs_body_size", "upstream_cx_destroy"):
        assert included(f"{labelled}.{suffix}") and re.fullmatch(ISTIO_SERIES, suffix)
    for name in (f"{labelled}.upstream_rq_retry", f"{labelled}.upstream_cx_active",
                 f"{labelled}.external.upstream_rq_200",
                 "cluster.main_internal;.upstream_cx_total", "listener.127.0.0.2_15008.downstream_cx_total",
                 "http.connect_terminate.downstream_rq_2xx", "tcp.connect_originate.downstream_cx_total",
                 "cluster.inbound-vip|9080|http|r.upstream_rq_total"):
        assert not included(name), name


# -- a real Envoy ---------------------------------------------------------------------------------
def test_real_envoy_tags_a_waypoints_stats_and_creates_only_the_included(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    secrets = {n: P.to_dict(m) for n, m in build_secrets(ca.issue("default", "waypoint"), ca.root_pem()).items()}
    config = translate(build_store(tmp_path / "s", [BOOKINFO, TRAFFIC, GOLDEN / "reviews.yaml"]), "default",
                       secrets=secrets, ip="127.0.0.1")
    resources = {t: {n: P.to_dict(m) for n, m in items.items()} for t, items in config.messages().items()}
    static = build_static_bootstrap(resources)
    for listener in static["static_resources"]["listeners"]:
        if "address" in listener:
            listener["address"]["socket_address"]["port_value"] = 0  # any free port
    admin = tmp_path / "admin.sock"
    boot = build_bootstrap("waypoint~test", "test", tmp_path / "ads.sock", admin, metadata={"NODE_TYPE": "waypoint"})
    assert boot["stats_config"] == build_stats_config("waypoint")
    static.update(admin=boot["admin"], stats_config=boot["stats_config"])
    (tmp_path / "b.json").write_text(json.dumps(static))
    with (tmp_path / "envoy.log").open("wb") as log:
        proc = subprocess.Popen([ENVOY, "-c", str(tmp_path / "b.json"), "--disable-hot-restart", "--concurrency", "1",
                                 "-l", "warning"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        live = lambda text: ("envoy_server_state", {}, 0.0) in parse_samples(text)  # noqa: E731
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline and not live(text):
            assert proc.poll() is None, (tmp_path / "envoy.log").read_text()[-2000:]
            try:
                text = fetch_admin(admin, "/stats/prometheus").decode()
            except (AdminError, OSError):
                pass
            time.sleep(0.05)
        assert live(text), (tmp_path / "envoy.log").read_text()[-2000:]
        samples = list(parse_samples(text))
        names = {n for n, _, _ in samples}
        opened = {labels["envoy_cluster_name"]: labels for n, labels, _ in samples
                  if n == "envoy_cluster_upstream_cx_total" and labels.get("reporter")}
        assert opened["inbound-vip|9080|http/v2|reviews_default_svc_cluster_local"] == {
            "reporter": "waypoint", "request_protocol": "http", "destination_service": REVIEWS,
            "destination_service_name": "reviews", "destination_service_namespace": "default",
            "destination_version": "v2",
            "envoy_cluster_name": "inbound-vip|9080|http/v2|reviews_default_svc_cluster_local"}
        assert {"envoy_server_state", "envoy_listener_manager_listener_in_place_updated",
                "envoy_cluster_manager_active_clusters", "envoy_cluster_upstream_rq_total"} <= names
        assert not {"envoy_cluster_upstream_rq_retry", "envoy_listener_downstream_cx_total",
                    "envoy_http_downstream_rq_total", "envoy_cluster_upstream_cx_active"} & names
        assert len(fetch_admin(admin, "/stats").decode().splitlines()) < 400
    finally:
        proc.kill()
        proc.wait(10)
