"""The seeds' inference server (seed 000) as an evaluation backend and a deployment target.

client.py speaks its HTTP API over one kept-alive `requests` session (timeouts, retries
that honour Retry-After and never duplicate a job, job polling, counted failures),
backend.py evaluates a checkpoint through it (and refuses a wrongly served model),
deploy.py makes the best checkpoint the served one and rolls it back (`tunewatch deploy`).
"""
