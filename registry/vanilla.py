from regbench.plugin import Regularizer


class Vanilla(Regularizer):
    name = "vanilla"
    description = "Plain fine-tuning: the shared recipe with nothing added; the baseline."
    citation = "Devlin et al., NAACL 2019, BERT"
