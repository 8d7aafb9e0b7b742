"""TF-Serving-compatible REST + gRPC service, model store, clients and the embedding job.

Filled by the serving issue; the SavedModel contract it serves is in ``vae_tf.export``.
"""
