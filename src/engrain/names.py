"""The names a configuration may use, in a leaf module: checking a config never imports torch or
the methods' code (their implementations register under these names in engrain.methods)."""

METHODS = ("icl", "pbft", "head", "distill", "cpt", "cft")  # icl trains nothing: it is `engrain eval`
TRAIN_METHODS = tuple(m for m in METHODS if m != "icl")
DOC_METHODS = ("cpt", "cft")  # train on documents (--train-data CORPUS), not on labelled examples
CFT_PROMPTS = ("contextual", "negative", "random")
PARAM_SETS = ("full", "lora", "bitfit", "ia3", "prefix")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # fp16: for GPUs without bf16 (training adds a grad scaler)
