"""Pairwise vs multi-reference BLEU uniqueness on the first N images of a Karpathy caption file.

    python docs/checks/multireference_bleu.py CAPTIONS.json N

For every image with at least three distinct captions (lower-cased, white space collapsed), computes the
weights twice: wfa's pairwise definition (``wfa.redundancy.bleu_uniqueness``) and the multi-reference
variant ``u(c) = 1 - BLEU(c, refs=all other distinct captions) / 100``, normalised the same way. Prints
the mean largest weight, the share of captions weighted below 0.01 and the share of images where one
caption takes more than 0.9 (docs/method.md, "Why this definition").
"""
import sys
import numpy as np, sacrebleu
from wfa.data.karpathy import read_karpathy_captions
from wfa.redundancy import bleu_uniqueness, normalize_caption
path, n = sys.argv[1], int(sys.argv[2])
images = read_karpathy_captions(path)[:n]
stats = {"pair": [], "multi": []}
for im in images:
    caps = list(im.captions)
    distinct = list(dict.fromkeys(normalize_caption(c).lower() for c in caps))
    if len(distinct) < 3:
        continue
    u = np.array([1 - sacrebleu.sentence_bleu(c, [o for o in distinct if o != c], lowercase=True).score / 100
                  for c in distinct]).clip(0, 1)
    w_multi = u / u.sum() if u.sum() > 0 else np.full(len(u), 1 / len(u))
    w_pair = bleu_uniqueness(distinct)
    for name, w in (("pair", w_pair), ("multi", w_multi)):
        stats[name].append((w.max(), (w < 0.01).mean(), len(w)))
for name, rows in stats.items():
    a = np.array(rows)
    print(f"{name}: images {len(a)}, mean max weight {a[:,0].mean():.3f}, captions with weight < 0.01: {100*a[:,1].mean():.1f} %, "
          f"images where one caption takes > 0.9: {100*(a[:,0] > 0.9).mean():.1f} %")
