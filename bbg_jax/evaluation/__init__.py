"""Evaluation: FID Inception port, FID/IS, linear probe, image sheets, evaluator contract.

Modules (import them directly; this file imports nothing, so TensorFlow and the Inception
weights load only when used):
  inception            the FID Inception-v3 package: the Flax port (``network``), its TorchScript
                       weight reader, the IS logits-head converter, ``benchmark`` (images/s)
                       and ``fid_sanity`` (FID on Fashion-MNIST)
  metrics              Fréchet distance, Inception Score, streaming feature statistics
  probe                frozen-E features and the linear probe
  generation           sampling G: EMA/raw weights, batch/standing BN statistics
  png, sheets          a numpy+zlib PNG writer; sample/reconstruction/interpolation sheets
  sharded              run a function over every device's rows of an evaluation batch
  sharded_probe        the linear probe on features sharded over every device and process
  plan                 each evaluator's host RAM, device memory, reads and time, before a run
  interrupt            a SIGTERM honoured between the batches of an evaluation inside training
  config               the ``eval`` config section: shared fields and one section per evaluator
  settings             a run config's ``eval`` section and the probe settings read from it
  probe_files          where a step's trained-encoder features and classifier are kept
  evaluators           ``run(state) -> (metrics, images)`` evaluators and their ``REGISTRY``
  standalone           evaluate a checkpoint, write report.json and PNGs, track the best probe
  report               the run report: baselines, probes, FID first/last, reconstructions
"""
