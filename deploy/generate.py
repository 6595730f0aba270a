#!/usr/bin/env python3
"""Writes the claim-day dashboard and the Prometheus rules from one place.

    python3 deploy/generate.py      # rewrites deploy/grafana/anticamera.json
                                    # and deploy/prometheus/anticamera-alerts.yml

Both outputs are committed; edit this file, run it, commit all three. Python 3 standard library
only. The wait objective lives here (WAIT_OBJECTIVE, WAIT_THRESHOLD_SECONDS): change it, run the
script, and fix the expected values in deploy/prometheus/anticamera-alerts.test.yml if
`promtool test rules` says so. WAIT_THRESHOLD_SECONDS must be a bucket boundary of
anticamera_waitroom_wait_seconds (telemetry::WAIT_BUCKETS).
"""

import json
import os

# ---- The wait objective ------------------------------------------------------------------------
# 99% of the people admitted through a gate waited at most 30 minutes, per gate and cohort.
WAIT_OBJECTIVE = 0.99
WAIT_THRESHOLD_SECONDS = 1800
# The scrape job anticamera is scraped under (README: "Monitoring").
JOB = "anticamera"
# Where the runbooks are read: the path in this repository by default. To link to where your
# copy of the repository is browsed, run with e.g.
# ANTICAMERA_RUNBOOK_BASE=https://git.example.org/ops/anticamera/blob/main/deploy/runbooks.md
RUNBOOK = os.environ.get("ANTICAMERA_RUNBOOK_BASE", "deploy/runbooks.md")

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET = round(1 - WAIT_OBJECTIVE, 10)

# ---- Recording rules ---------------------------------------------------------------------------
# Multi-window, multi-burn-rate (the SRE workbook, ch. 5): the share of people admitted after
# waiting longer than the threshold, over each window the alerts need.
SLO_WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]


def slow_ratio(window):
    count = f"sum by (gate, cohort) (rate(anticamera_waitroom_wait_seconds_count[{window}]))"
    good = (
        "sum by (gate, cohort) (rate(anticamera_waitroom_wait_seconds_bucket"
        f'{{le="{WAIT_THRESHOLD_SECONDS}"}}[{window}]))'
    )
    return f"({count} - {good})\n/\n{count}"


RECORDING = [
    (
        "gate_cohort:anticamera_waitroom_wait_seconds:p50_10m",
        "histogram_quantile(0.5, sum by (gate, cohort, le) "
        "(rate(anticamera_waitroom_wait_seconds_bucket[10m])))",
    ),
    (
        "gate_cohort:anticamera_waitroom_estimated_wait_seconds:avg_30m",
        "avg by (gate, cohort) (avg_over_time(anticamera_waitroom_estimated_wait_seconds[30m]))",
    ),
] + [
    (f"gate_cohort:anticamera_waitroom_wait_slow:ratio_rate{w}", slow_ratio(w))
    for w in SLO_WINDOWS
]


def burn(long, short, factor):
    t = round(factor * BUDGET, 10)
    return (
        f"(gate_cohort:anticamera_waitroom_wait_slow:ratio_rate{long} > {t}\n"
        f" and gate_cohort:anticamera_waitroom_wait_slow:ratio_rate{short} > {t})"
    )


LANE = "job, instance, gate, cohort"
ALERTS = [
    dict(
        alert="AnticameraLeakRefused",
        expr="increase(anticamera_isolation_leaks_blocked_total[5m]) > 0",
        severity="critical",
        summary="The portal sent a personal page to the wrong user; anticamera refused it.",
        description="{{ $labels.instance }} refused {{ $value | humanize }} portal responses "
        "stamped for another user in the last 5 minutes. The portal is mixing users' data.",
        anchor="anticameraleakrefused",
    ),
    dict(
        alert="AnticameraShiftedResponseRefused",
        expr='increase(anticamera_isolation_refused_total{reason=~"request_id_.*"}[5m]) > 0',
        severity="critical",
        summary="The portal answered a request with another request's response; anticamera refused it.",
        description="{{ $labels.instance }} refused {{ $value | humanize }} portal responses "
        "whose request id echo was missing or wrong ({{ $labels.reason }}) in the last 5 minutes. "
        "A portal connection carried a shifted or stray response.",
        anchor="anticamerashiftedresponserefused",
    ),
    dict(
        alert="AnticameraPortalSaturated",
        expr="anticamera_upstream_in_flight >= on (job, instance) anticamera_upstream_limit\n"
        "or on (job, instance)\n"
        "sum by (job, instance) (rate(anticamera_shed_total[5m])) > 0",
        for_="5m",
        severity="warning",
        summary="The portal is at its concurrency limit, and requests are being shed.",
        description="{{ $labels.instance }} has kept the portal at its concurrency limit, or "
        "shed requests, for 5 minutes.",
        anchor="anticameraportalsaturated",
    ),
    dict(
        alert="AnticameraBreakerOpen",
        expr="anticamera_breaker_state > 0",
        for_="2m",
        severity="critical",
        summary="The circuit breaker in front of the portal is open.",
        description="{{ $labels.instance }} has not let requests through to the portal for 2 "
        "minutes (breaker state {{ $value }}: 1 open, 2 half-open): the portal keeps failing.",
        anchor="anticamerabreakeropen",
    ),
    dict(
        alert="AnticameraAdmissionsStalled",
        expr=f"sum by ({LANE}) (anticamera_waitroom_waiting) > 0\n"
        f"and on ({LANE}) anticamera_waitroom_admitting == 1\n"
        f"and on ({LANE})\n"
        f"sum by ({LANE}) (increase(anticamera_waitroom_admitted_total[10m])) == 0",
        for_="5m",
        severity="critical",
        summary="People are waiting and nobody has been let in for 10 minutes.",
        description="{{ $labels.instance }}: {{ $value }} people wait at gate "
        "{{ $labels.gate }} (cohort {{ $labels.cohort }}), the lane is open, and nobody "
        "was admitted for the last 10 minutes.",
        anchor="anticameraadmissionsstalled",
    ),
    dict(
        alert="AnticameraWaitBudgetBurn",
        expr=burn("1h", "5m", 14.4) + "\nor\n" + burn("6h", "30m", 6),
        severity="critical",
        summary="People wait far longer than the wait objective, fast.",
        description=f"Gate {{{{ $labels.gate }}}} (cohort {{{{ $labels.cohort }}}}) spends the "
        f"wait budget ({BUDGET:.0%} of people admitted after more than "
        f"{WAIT_THRESHOLD_SECONDS // 60} minutes) at 6 to 14.4 times the sustainable rate.",
        anchor="anticamerawaitbudgetburn",
    ),
    dict(
        alert="AnticameraWaitBudgetBurn",
        expr=burn("1d", "2h", 3) + "\nor\n" + burn("3d", "6h", 1),
        severity="warning",
        summary="People wait longer than the wait objective.",
        description=f"Gate {{{{ $labels.gate }}}} (cohort {{{{ $labels.cohort }}}}) spends the "
        f"wait budget ({BUDGET:.0%} of people admitted after more than "
        f"{WAIT_THRESHOLD_SECONDS // 60} minutes) faster than it lasts.",
        anchor="anticamerawaitbudgetburn",
    ),
    dict(
        alert="AnticameraWaitEstimateOff",
        expr="(\n"
        "  gate_cohort:anticamera_waitroom_wait_seconds:p50_10m\n"
        "  / on (gate, cohort) gate_cohort:anticamera_waitroom_estimated_wait_seconds:avg_30m\n"
        "  > 2\n"
        "or\n"
        "  gate_cohort:anticamera_waitroom_wait_seconds:p50_10m\n"
        "  / on (gate, cohort) gate_cohort:anticamera_waitroom_estimated_wait_seconds:avg_30m\n"
        "  < 0.5\n"
        ")\n"
        "and on (gate, cohort) gate_cohort:anticamera_waitroom_wait_seconds:p50_10m > 60",
        for_="15m",
        severity="warning",
        summary="The wait shown to people is far from the wait they get.",
        description="Gate {{ $labels.gate }} (cohort {{ $labels.cohort }}): people admitted "
        "waited {{ $value | humanize }} times the estimate shown over the last 30 minutes.",
        anchor="anticamerawaitestimateoff",
    ),
    dict(
        alert="AnticameraConfigReloadFailed",
        expr='increase(anticamera_config_reload_total{result="failure"}[15m]) > 0',
        severity="warning",
        summary="A configuration reload failed; the previous configuration is still in force.",
        description="{{ $labels.instance }} refused a new configuration in the last 15 minutes.",
        anchor="anticameraconfigreloadfailed",
    ),
    dict(
        alert="AnticameraDown",
        expr=f'up{{job="{JOB}"}} == 0',
        for_="1m",
        severity="critical",
        summary="An anticamera node does not answer its scrape.",
        description="{{ $labels.instance }} has been unreachable for 1 minute: the people it "
        "served reach the other nodes, or nothing.",
        anchor="anticameradown",
    ),
    dict(
        alert="AnticameraStoreDown",
        expr="anticamera_store_up == 0",
        for_="1m",
        severity="critical",
        summary="The shared admission store is unreachable.",
        description="{{ $labels.instance }} cannot reach the shared admission store.",
        anchor="anticamerastoredown",
    ),
]


def q(s):
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(s)


def block(s, indent):
    pad = " " * indent
    return "|-\n" + "\n".join(pad + line for line in s.split("\n"))


def rules_yaml():
    out = [
        "# Generated by deploy/generate.py: edit that, run it, commit both.",
        f"# Wait objective: {WAIT_OBJECTIVE:.0%} of the people admitted through a gate waited at "
        f"most {WAIT_THRESHOLD_SECONDS // 60} minutes",
        "# (per gate and cohort). Runbooks: deploy/runbooks.md.",
        "groups:",
        "  - name: anticamera.rules",
        "    rules:",
    ]
    for record, expr in RECORDING:
        out += [f"      - record: {record}", f"        expr: {block(expr, 10)}"]
    out += ["  - name: anticamera.alerts", "    rules:"]
    for a in ALERTS:
        out += [f"      - alert: {a['alert']}", f"        expr: {block(a['expr'], 10)}"]
        if a.get("for_"):
            out.append(f"        for: {a['for_']}")
        out += [
            "        labels:",
            f"          severity: {a['severity']}",
            "        annotations:",
            f"          summary: {q(a['summary'])}",
            f"          description: {q(a['description'])}",
            f"          runbook_url: {q(RUNBOOK + '#' + a['anchor'])}",
        ]
    return "\n".join(out) + "\n"


# ---- Dashboard ---------------------------------------------------------------------------------
DS = {"type": "prometheus", "uid": "${datasource}"}
LANE_SEL = 'instance=~"$instance", gate=~"$gate", cohort=~"$cohort"'
NODE_SEL = 'instance=~"$instance"'
RI = "$__rate_interval"


def panel(title, targets, unit="short", desc="", kind="timeseries", w=8, h=8):
    p = {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
            for i, (e, l) in enumerate(targets)
        ],
        "_w": w,
        "_h": h,
    }
    if kind == "table":
        for t in p["targets"]:
            t["format"] = "table"
            t["instant"] = True
    return p


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


PANELS = [
    row("Waiting room, per gate and cohort"),
    panel(
        "Waiting",
        [(f"sum by (gate, cohort) (anticamera_waitroom_waiting{{{LANE_SEL}}})",
          "{{gate}} / {{cohort}}")],
        desc="People in line (tickets not yet admitted).",
    ),
    panel(
        "Inside, held places and capacity",
        [
            (f"sum by (gate, cohort) (anticamera_waitroom_active{{{LANE_SEL}}})",
             "inside {{gate}} / {{cohort}}"),
            (f"sum by (gate, cohort) (anticamera_waitroom_pending{{{LANE_SEL}}})",
             "held {{gate}} / {{cohort}}"),
            (f"sum by (gate, cohort) (anticamera_waitroom_capacity{{{LANE_SEL}}})",
             "capacity {{gate}} / {{cohort}}"),
        ],
    ),
    panel(
        "Admitted per second",
        [(f"sum by (gate, cohort) (rate(anticamera_waitroom_admitted_total{{{LANE_SEL}}}[{RI}]))",
          "{{gate}} / {{cohort}}")],
        unit="reqps",
    ),
    panel(
        "Wait: estimate shown against actual",
        [
            (f"max by (gate, cohort) (anticamera_waitroom_estimated_wait_seconds{{{LANE_SEL}}})",
             "estimate {{gate}} / {{cohort}}"),
            ("histogram_quantile(0.5, sum by (gate, cohort, le) "
             f"(rate(anticamera_waitroom_wait_seconds_bucket{{{LANE_SEL}}}[{RI}])))",
             "actual p50 {{gate}} / {{cohort}}"),
            ("histogram_quantile(0.9, sum by (gate, cohort, le) "
             f"(rate(anticamera_waitroom_wait_seconds_bucket{{{LANE_SEL}}}[{RI}])))",
             "actual p90 {{gate}} / {{cohort}}"),
        ],
        unit="s",
        desc="The estimate is what a new arrival is told now; actual is the wait of the people "
        "admitted now.",
    ),
    panel(
        f"Admitted within {WAIT_THRESHOLD_SECONDS // 60} min (objective "
        f"{WAIT_OBJECTIVE:.0%})",
        [(f"sum by (gate, cohort) (increase(anticamera_waitroom_wait_seconds_bucket"
          f'{{{LANE_SEL}, le="{WAIT_THRESHOLD_SECONDS}"}}[$__range]))\n'
          "/\n"
          f"sum by (gate, cohort) (increase(anticamera_waitroom_wait_seconds_count"
          f"{{{LANE_SEL}}}[$__range]))",
          "{{gate}} / {{cohort}}")],
        unit="percentunit",
        kind="stat",
        desc="Over the dashboard's time range. The alert AnticameraWaitBudgetBurn watches it.",
    ),
    panel(
        "Late line",
        [(f"sum by (gate, cohort) (anticamera_waitroom_late{{{LANE_SEL}}})",
          "{{gate}} / {{cohort}}")],
        desc="Admitted people back after their held place lapsed, waiting for room.",
    ),
    panel(
        "Closed-window refusals per second",
        [(f"sum by (gate, cohort) (rate(anticamera_schedule_closed_total{{{LANE_SEL}}}[{RI}]))",
          "{{gate}} / {{cohort}}")],
        unit="reqps",
    ),
    panel(
        "Lane admitting new people",
        [(f"min by (gate, cohort) (anticamera_waitroom_admitting{{{LANE_SEL}}})",
          "{{gate}} / {{cohort}}")],
        desc="1 open; 0 closed window, pre-queue or paused by the admin API.",
    ),
    panel(
        "Tokens refused per second",
        [("sum by (gate, reason) (rate(anticamera_waitroom_refused_total"
          f'{{instance=~"$instance", gate=~"$gate"}}[{RI}]))',
          "{{gate}} {{reason}}")],
        unit="reqps",
        desc="Forged, tampered, expired, copied or wrong-gate waiting-room cookies.",
    ),
    row("Portal"),
    panel(
        "In flight against the limit",
        [
            (f"sum by (instance) (anticamera_upstream_in_flight{{{NODE_SEL}}})",
             "in flight {{instance}}"),
            (f"sum by (instance) (anticamera_upstream_limit{{{NODE_SEL}}})",
             "limit {{instance}}"),
            (f"sum by (instance) (anticamera_upstream_queued{{{NODE_SEL}}})",
             "queued {{instance}}"),
        ],
    ),
    panel(
        "Portal latency",
        [
            ("histogram_quantile(0.5, sum by (le) "
             f"(rate(anticamera_upstream_duration_seconds_bucket{{{NODE_SEL}}}[{RI}])))", "p50"),
            ("histogram_quantile(0.99, sum by (le) "
             f"(rate(anticamera_upstream_duration_seconds_bucket{{{NODE_SEL}}}[{RI}])))", "p99"),
            ("histogram_quantile(0.99, sum by (le) "
             f"(rate(anticamera_upstream_slot_wait_seconds_bucket{{{NODE_SEL}}}[{RI}])))",
             "p99 wait for a slot"),
        ],
        unit="s",
    ),
    panel(
        "Errors and 5xx answers per second",
        [
            (f"sum by (kind) (rate(anticamera_errors_total{{{NODE_SEL}}}[{RI}]))", "{{kind}}"),
            ("sum by (status) (rate(anticamera_requests_total"
             f'{{{NODE_SEL}, status=~"5.."}}[{RI}]))', "answered {{status}}"),
        ],
        unit="reqps",
    ),
    panel(
        "Circuit breaker",
        [(f"max by (instance) (anticamera_breaker_state{{{NODE_SEL}}})", "{{instance}}")],
        desc="0 closed, 1 open, 2 half-open.",
    ),
    panel(
        "Shed per second, by reason",
        [(f"sum by (reason, priority) (rate(anticamera_shed_total{{{NODE_SEL}}}[{RI}]))",
          "{{reason}} ({{priority}})")],
        unit="reqps",
    ),
    panel(
        "Portal addresses in rotation",
        [(f"sum by (upstream) (anticamera_upstream_healthy{{{NODE_SEL}}})", "{{upstream}}")],
    ),
    row("Isolation and rate limits"),
    panel(
        "Responses refused by the leak guard",
        [(f"sum by (instance) (increase(anticamera_isolation_leaks_blocked_total{{{NODE_SEL}}}"
          f"[{RI}]))", "{{instance}}"),
         (f"sum by (instance, reason) (increase(anticamera_isolation_refused_total{{{NODE_SEL}}}"
          f"[{RI}]))", "{{instance}} {{reason}}")],
        desc="Any value above 0 pages (AnticameraLeakRefused, AnticameraShiftedResponseRefused).",
    ),
    panel(
        "Personal responses marked private per second",
        [(f"sum (rate(anticamera_isolation_marked_private_total{{{NODE_SEL}}}[{RI}]))",
          "marked private")],
        unit="reqps",
    ),
    panel(
        "Rate-limited per second, by kind",
        [(f"sum by (kind) (rate(anticamera_ratelimit_limited_total{{{NODE_SEL}}}[{RI}]))",
          "{{kind}}")],
        unit="reqps",
    ),
    row("Nodes"),
    panel(
        "Up",
        [(f'up{{job="{JOB}", {NODE_SEL}}}', "{{instance}}")],
    ),
    panel(
        "Requests per second, by node and outcome",
        [(f"sum by (instance, outcome) (rate(anticamera_requests_total{{{NODE_SEL}}}[{RI}]))",
          "{{instance}} {{outcome}}")],
        unit="reqps",
    ),
    panel(
        "Open connections",
        [
            (f"sum by (instance) (anticamera_open_connections{{{NODE_SEL}}})", "{{instance}}"),
            ("sum by (instance) (rate(anticamera_connections_total"
             f'{{{NODE_SEL}, result="refused_limit"}}[{RI}]))', "refused/s {{instance}}"),
            (f"sum by (instance) (rate(anticamera_framing_rejected_total{{{NODE_SEL}}}[{RI}]))",
             "ambiguous framing/s {{instance}}"),
        ],
    ),
    panel(
        "Admission factor",
        [(f"min by (instance) (anticamera_waitroom_admission_factor{{{NODE_SEL}}})",
          "{{instance}}")],
        unit="percentunit",
        desc="Share of the configured admission given now: lower while the portal struggles.",
    ),
    panel(
        "Micro-cache per second",
        [(f"sum by (result) (rate(anticamera_microcache_total{{{NODE_SEL}}}[{RI}]))",
          "{{result}}")],
        unit="reqps",
    ),
    panel(
        "Builds and configuration",
        [
            (f"max by (instance, version, commit) (anticamera_build_info{{{NODE_SEL}}})", ""),
            ("max by (instance) (time() - "
             f"anticamera_config_last_reload_success_timestamp_seconds{{{NODE_SEL}}})", ""),
            ("sum by (instance, result) (anticamera_config_reload_total"
             f"{{{NODE_SEL}}})", ""),
        ],
        kind="table",
        w=16,
    ),
]


def layout(panels):
    x = y = 0
    row_h = 0
    for i, p in enumerate(panels):
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i + 1
        x += w
        row_h = max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
    return panels


def variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-query"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard():
    return {
        "title": "anticamera: claim day",
        "uid": "anticamera-claim-day",
        "description": "Waiting room per gate and cohort, the portal, isolation and rate limits, "
        "per node. Generated by deploy/generate.py.",
        "tags": ["anticamera"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-3h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("instance", "Node", f"label_values(anticamera_build_info, instance)"),
                variable(
                    "gate",
                    "Gate",
                    'label_values(anticamera_waitroom_waiting{instance=~"$instance"}, gate)',
                ),
                variable(
                    "cohort",
                    "Cohort",
                    'label_values(anticamera_waitroom_waiting{instance=~"$instance", '
                    'gate=~"$gate"}, cohort)',
                ),
            ]
        },
        "panels": layout(PANELS),
    }


def main():
    with open(os.path.join(HERE, "grafana", "anticamera.json"), "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    with open(os.path.join(HERE, "prometheus", "anticamera-alerts.yml"), "w") as f:
        f.write(rules_yaml())


if __name__ == "__main__":
    main()
