"""tunewatch's Grafana dashboards as code (grafana-foundation-sdk, Grafana 11.6).

Why code: hand-edited dashboard JSON drifts (copied panels keep stale queries, uids
collide, `__inputs` sneak in from exports). Every dashboard under grafana/dashboards/ is
written by `make dashboards` from these modules; a test fails when the committed JSON and
the generator disagree, and another runs every panel query against a live Prometheus.
"""
