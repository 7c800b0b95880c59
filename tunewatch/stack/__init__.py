"""The local stack behind `tunewatch up` (`make up`): the whole stack on 127.0.0.1 at once.

Why: a newcomer should reach a running Prometheus and Alertmanager, scraping real tunewatch
processes, within a minute and with nothing to configure. The stack starts node_exporter,
Alertmanager, the alert-log webhook receiver, the tunewatch processes that exist, and
Prometheus last (with the repository's rules), keeps their data under `stack.data_dir`,
prints the URLs and a live one-line status, and stops everything on Ctrl-C.

- components.py: the processes of the stack, their command lines and ports, and the checks
  made before starting them (free ports, binaries on PATH);
- render.py: Prometheus's and Alertmanager's configs and the file_sd targets, rendered
  from the repository's files for this stack;
- supervisor.py: starting the components in order, watching them, stopping them;
- status.py: the one-line status, read from Prometheus itself;
- grafana.py: Grafana with the repository's dashboards, where a Grafana binary exists;
- postgres.py: the PostgreSQL that Grafana's Predictions dashboard reads, started with it.
"""
