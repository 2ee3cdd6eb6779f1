"""`harness explore`: random stateful runs of the catalog's own step kinds against the bed's libvirtd.

Why: the catalog catches the bugs someone thought of. Exploration drives Hypothesis-chosen sequences of
the same steps, judged by the same oracle after every step, and turns a failure into a minimal scenario
file (plus a plain virsh script) that the catalog can keep.

model.py: what a sequence is and which steps are meaningful next (pure); machine.py: the Hypothesis
state machine and the budgeted run; writer.py: the scenario YAML and the virsh script.
"""
