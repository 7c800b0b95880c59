"""The seeds' inference server (seed 000): its HTTP API and deployments to it.

client.py speaks its HTTP API over one kept-alive `requests` session (timeouts, retries
that honour Retry-After and never duplicate a job, job polling, counted failures);
deploy.py makes the best checkpoint the served one, rolls it back and reports what is
served (`tunewatch deploy`). Evaluating a checkpoint through the server is a backend:
evaluators/backends/remote.py.
"""
