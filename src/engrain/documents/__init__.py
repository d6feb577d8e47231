"""Documents into weights: everything about a corpus and the questions that test what was learnt.

    corpus      Document / Chunk / Question, loading a corpus (folder, .txt/.md file, JSONL) and questions
    chunking    splitting long documents on paragraph / sentence / word boundaries, losing nothing
    facts       the generated fictional-knowledge benchmark (v2: balanced, with a train/test split of entities)
    facts_v1    the first generator, kept so that records made with it still mean what they meant
    baselines   what a question can be answered with without knowledge: chance, the corpus prior, longest choice
    qa          multiple-choice scoring closed and open book (tokenised as lm-evaluation-harness does)
    prompts     Contextual Fine-Tuning's "how to learn this" prompts and their ablations
    forgetting  what learning costs elsewhere (RTE 16-shot ICL, held-out perplexity)
    augment     more renderings of a corpus (sentence orders, linked documents, generated texts), clozes
"""

from engrain.documents.chunking import chunk_documents, chunk_text
from engrain.documents.corpus import Chunk, Document, Question, load_corpus, load_questions

__all__ = ["Chunk", "Document", "Question", "chunk_documents", "chunk_text", "load_corpus", "load_questions"]
