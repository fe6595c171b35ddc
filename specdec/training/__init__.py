"""Training draft heads on a frozen backbone: data (data.py, distill.py), each head kind's losses and evaluation
(medusa.py; eagle.py for EAGLE and EAGLE-3), the run's settings (config.py) and the shared loop (loop.py).
train/gen_distill.py and train/train_heads.py are their command lines."""
