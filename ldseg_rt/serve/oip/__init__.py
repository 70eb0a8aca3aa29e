"""The Open Inference Protocol (KServe v2 REST) endpoint, as Triton's clients speak it.

    GET  /v2/health/live, /v2/health/ready          open to all (probes)
    GET  /v2                                         server metadata
    GET  /v2/models/{name}[/versions/1]              model metadata
    GET  /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer        one image in, its segmentation out
    GET  /metrics                                    Prometheus text

An infer request carries one input, IMAGE ((H, W) or (H, W, C); FP32, UINT8, INT16 or
UINT16), and may set the request parameters n, seed and steps (sample()'s, which checks
them). The response holds the outputs asked for (MASK, PROBS, UNCERTAINTY by default; SAMPLES
only when asked for) and, in its parameters, the seed, n and steps used: the seed reproduces
the result. Tensors travel in JSON or binary (see tensors.py). Every error is a JSON body
{"error": message}, which Triton's clients read; with a token, every path but the health
probes needs `Authorization: Bearer <token>`.

Laid out as KServe's v2 endpoints are, one concern a module:

    routes.py     create_app: the FastAPI app, its route table and exception handlers
    handlers.py   what each path answers (health, metadata, readiness, infer)
    auth.py       the bearer token check
    parsing.py    an infer request's body -> an InferCall (image, SampleOptions, outputs)
    runner.py     the model runner: an InferCall on the work queue -> the response tensors
    tensors.py    the protocol's tensors to and from numpy (JSON and binary)
    errors.py     HttpError, and the status and metrics outcome each failure gets
    infer_log.py  what an infer request's log line says
    limits.py     the endpoint's default limits (the service's settings read them)
    server.py     uvicorn on a thread of its own

This package's __init__ imports nothing, so that the service's settings read limits.py
without loading the web stack.
"""
