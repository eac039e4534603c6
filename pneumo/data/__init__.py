"""Stage 1, data: scan a data directory, decode once into the cache, make patient-grouped folds,
audit and de-duplicate, and feed batches (sampler, on-device augmentation, mixing) to the device."""
