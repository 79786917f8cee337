"""The ShapesWorld reproduction of the paper's findings (experiment.py beside this folder).

Every call below shares one workdir (default workdirs/experiment): a run is named by its
settings, so the calls reuse each other's pairs, labels and trained runs.

    python -m projects.shapesworld_paper.main \
        --config=projects/shapesworld_paper/configs/experiment.py:ARG --workdir=workdirs/experiment

  shapesworld (default)  8 arms x 3 training seeds from the shipped base model, every arm at
                         beta 500 (the untuned setting); results/shapesworld.md and
                         results/shapesworld_appendix_b.png
  tuned                  the whole-video arms at the setting the training-split sweep chose,
                         beside DenseDPO; results/shapesworld_tuned.md
  tune                   that sweep: the first seed of Vanilla/Structural/DenseDPO at beta 500
                         and 2500, scored at steps 50 and 100 on training prompts;
                         results/shapesworld_tune.md
  motion                 why DenseDPO slows clips: DenseDPO on only the segments won by the
                         faster (slower) member, with other eta ranges, tie margins, a
                         per-frame granularity and beta; results/shapesworld_motion.md
  objective              DenseDPO's objective variants that need no motion information
                         (DPO-Positive, a ground-truth flow term, summed units), 3 seeds;
                         results/shapesworld_objective.md
  mini                   2 seeds, a few pairs and steps: checks that every arm runs; its
                         report goes to the workdir (report.md)
Every model is scored under two independent sets of evaluation noise (`eval_seeds`). Every DPO
setting comes from configs/dpo_common.py (the main job's), so the DenseDPO arm is the main job
at the experiment's pair budget. `bash projects/shapesworld_paper/regenerate_results.sh` runs
them all. results/ above is projects/shapesworld_paper/results/.
"""
import ml_collections

from configs import dpo_common
from projects.shapesworld_paper.experiment import ARMS


ARGS = ("shapesworld", "tuned", "tune", "motion", "objective", "mini")
# DenseDPO with one setting changed at a time (eta range of the guided pairs, segment tie margin,
# one frame a segment, beta): which of them keeps the base model's motion.
# wins=faster / slower: only the segment labels won by the faster / slower member (the rest tie).
MOTION_ARMS = ("pretrained,dense,dense:wins=faster,dense:wins=slower,dense:eta=0.2-0.4,"
               "dense:eta=0.7-0.9,dense:tie=0.0,dense:fps=1,dense:beta=2500")
# DenseDPO's objective variants, none of which uses motion information: DPO-Positive (pos: its
# hinge on the winner's error rise, on the scale of the DPO margin: 1 doubles the cost of that
# rise), a flow-matching term on each guided pair's ground truth (gt: lambda against the DPO
# term's gradient on an error, beta / 4 = 125 at the margin 0), the same term on each non-tie
# unit's preferred member (rpo: RPO, Pang et al. 2024), and a pair's units summed. Listed so
# that the first candidates finish first; VanillaDPO for the quality comparison. Then the
# DPO-Positive frontier: a weaker lambda, lambda 1 trained twice as long (does the quality it
# gives up come back with steps?), and VanillaDPO under the same hinge (is DenseDPO's motion
# advantage over VanillaDPO still there when both keep the winner's error down?).
OBJECTIVE_ARMS = ("pretrained,dense,dense:pos=1,dense:gt=125,dense:rpo=125,dense:reduce=sum,"
                  "dense:pos=5,vanilla,dense:gt=25,dense:rpo=25,dense:pos=0.25,"
                  "dense:pos=1:steps=200,vanilla:pos=1")


def get_config(arg=None):
  arg = arg or "shapesworld"
  if arg not in ARGS:
    raise ValueError(f"projects/shapesworld_paper/configs/experiment.py: unknown arg {arg!r}; "
                     f"expected one of {ARGS}")
  c = dpo_common.dpo_config("dense_dpo", "guided", "segment", "shapesworld")
  c.task = "experiment"
  c.pairs.pairs_per_part = 128
  c.evaluate.seeds_per_prompt = 4  # 18 held-out prompts x 4: 72 samples a model.
  e = c.experiment = ml_collections.ConfigDict()
  e.arms = ",".join(ARMS)
  e.seeds = (0, 1, 2)
  e.labeled_pairs = 128  # N: DenseDPO's labeled pairs; Vanilla and StructuralDPO get 3N.
  e.early_step = 50  # Also evaluate this checkpoint of every run (drift); 0: never.
  # Two independent sets of evaluation noise: a claim holds only if it holds under both.
  e.eval_seeds = (1234, 5678)
  e.results = "projects/shapesworld_paper/results/shapesworld.md"
  e.appendix_b = ml_collections.ConfigDict({
      "pool": 64,          # training videos to choose from (those whose shape covers the patch)
      "num_videos": 8, "draws": 8, "seed": 0,
      # Patch side / frame side: 8 x 8 of 16 x 16, 25% of the area. The paper's patch is 6.25%
      # of the area, but a 4 x 4 patch holds only part of a ShapesWorld shape.
      "patch_frac": 0.5,
      "blur_fracs": (0.0, 0.0625, 0.125, 0.25, 0.5)})  # blur sigma / patch side (the paper's)
  if arg == "tuned":
    # StructuralDPO's choice is step 50: a 50-step run (the learning rate is constant after
    # warm-up, so it is the 100-step run's step-50 checkpoint that the sweep scored).
    e.arms = "pretrained,vanilla:beta=2500,structural:beta=2500:steps=50,dense"
    e.results = "projects/shapesworld_paper/results/shapesworld_tuned.md"
  if arg == "tune":  # Training prompts only: the held-out ones stay unseen by the choice.
    e.arms = ("pretrained,vanilla,vanilla:beta=2500,structural,structural:beta=2500,dense,"
              "dense:beta=2500")
    e.seeds, e.eval_seeds = (0,), (1234,)
    c.videos.split_eval = "train"
    c.evaluate.max_prompts = 18  # As many as the held-out split has.
    e.results = "projects/shapesworld_paper/results/shapesworld_tune.md"
  if arg == "objective":
    e.arms = OBJECTIVE_ARMS
    e.early_step = 0  # Final checkpoints only: half the sampling.
    e.results = "projects/shapesworld_paper/results/shapesworld_objective.md"
  if arg == "motion":
    e.arms = MOTION_ARMS
    e.seeds = (0,)  # One training seed an arm (2 CPU cores); both evaluation noise sets.
    e.results = "projects/shapesworld_paper/results/shapesworld_motion.md"
  if arg in ("tuned", "tune", "motion", "objective"):
    e.appendix_b.num_videos = 0  # The main call has it.
  if arg == "mini":
    e.results = ""  # report.md in the workdir: a check never overwrites the published results.
    e.seeds = (0, 1)
    e.labeled_pairs = 4
    e.early_step = 1
    e.appendix_b.update(pool=4, num_videos=2, draws=1)
    c.pairs.update(pairs_per_part=4, batch_size=4, num_steps=2)
    c.data.update(batch_size=2, min_nontie_frac=0.0)
    c.label.tie_margin = 0.0
    c.update(total_steps=2, log_every=1, checkpoint_every=1)
    c.evaluate.update(max_prompts=2, seeds_per_prompt=1, num_steps=2, batch_size=2)
  return c
