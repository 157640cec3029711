"""VIGFace core ML: data, stage-1 FR training with virtual prototypes, the stage-2 generator
and its sampler, dataset making and evaluation. No service code: ``model_store``,
``workers`` and ``app`` call it, never the other way round."""
