"""TF-Serving-compatible REST + gRPC service, model store, clients and the embedding job.

- :mod:`serving.server` — ``vae-tf serve``: :class:`~serving.server.ModelServer` runs the
  :mod:`~serving.model_store` (versions, hot swap, labels), the REST server
  (:mod:`serving.rest`, TF Serving's ``/v1/models`` API on uvicorn) and the gRPC server
  (:mod:`serving.grpc_server`, ``tensorflow.serving.PredictionService`` / ``ModelService``),
  optionally with server-side batching (:mod:`serving.batching`).
- :mod:`serving.client` — ``RestClient`` / ``GrpcClient``: encode, decode, reconstruct, sample,
  metadata, status; they work against the official ``tensorflow/serving`` image too.
- :mod:`serving.embed` — ``vae-tf embed`` (chunked, resumable embedding extraction to .npz or
  Parquet, locally or through a server) and ``vae-tf probe``.

The SavedModel contract served is in :mod:`vae_tf.export`; the API contract in
``../shared/reference/tf-serving-api.md``; the user guide in ``docs/serving.md``. Importing this
package imports nothing heavy.
"""
