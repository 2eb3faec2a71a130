# %% [markdown]
# # Inference-time scaling by particle methods (Puri et al. 2025) and Feynman–Kac correctors (Skreta et al. 2025)
#
# Accuracy vs budget (1 … 128 rollouts) of particle filtering (PF), particle Gibbs (PG), best-of-N
# (BoN), weighted majority vote (WMV) and beam search on two worlds:
#
# * the **Markov reasoner** (exact value function; a noisy PRM built from it),
# * a **learned world**: a small JAX MLP trained on noisy multi-step modular arithmetic (it makes
#   mistakes on ~25% of the steps), scored by a noisy step verifier — the stand-in for an LLM + PRM.
#
# On the learned world the settings of PF (softmax temperature, resampling scheme, per-step vs
# accumulated weights, argmax vs weighted vote) and of beam search (beam width, argmax vs vote) are
# chosen on a **validation** set of problems disjoint from the **test** set on which every number is
# reported, with standard errors over problems (each problem's accuracy averaged over seeds). The
# budget is counted identically for every method (rollouts; the generator calls actually made are
# printed next to the accuracies).
#
# Then the scaling-rate comparison (budget each method needs to reach a target accuracy, relative to
# PF) and an FKC panel: annealed and product-of-experts targets of a 2-D Gaussian mixture.
# Run: `python examples/inference_scaling.py --outdir out [--quick]`.

# %%
from __future__ import annotations

import argparse
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import bayeskit as bk
from bayeskit.cli import parse_example_args

S = bk.scaling
K = bk.scaling.kernels
T = bk.testing  # validation worlds and FKC targets

# validation grids (the first entry of each grid is the paper's / reference code's default)
PF_GRID = {"temperature": (1.0, 0.25, 0.5, 2.0), "resampling": ("multinomial", "systematic"),
           "weights": (("per_step", 1.0), ("accumulated", 0.5)), "selection": ("argmax", "vote")}
BEAM_GRID = {"beam_width": (4, 2, 8), "selection": ("argmax", "vote")}
PG_PARTICLES = 4
# --quick validates over a smaller grid (every traced setting, but only the default resampling scheme and
# beam width, and argmax vs vote for beam search): fewer runs, the same compiled programs
QUICK_GRID = {"resampling": ("multinomial",), "beam_width": (4,)}


def vote(answers, weights, num_answers):
    """Weighted majority vote per row: argmax_a sum_i w_i 1[a_i = a]."""
    tallies = np.stack([np.sum(weights * (answers == a), axis=1) for a in range(num_answers)], 1)
    return np.argmax(tallies, axis=1)


def select(answers, log_weights, selection, num_answers):
    """The answer each row's pool returns under ``selection`` (as ``bk.scaling.kernels.select_answer``)."""
    rows = np.arange(answers.shape[0])
    if selection == "argmax":
        return answers[rows, np.argmax(log_weights, 1)]
    w = np.exp(log_weights - log_weights.max(1, keepdims=True))
    return vote(answers, w / w.sum(1, keepdims=True), num_answers)


def calls_per_particle(gen, history_states):
    """Generator calls made by each final particle's slot: 1 at the first step, then one per step
    at which it was still live (finished particles are not extended)."""
    done = jax.vmap(gen.is_done)(history_states)
    return 1 + jnp.sum(~done[:-1], axis=0)


class Runner:
    """Jitted, problem-vmapped runs of every method through ``bk.scaling.kernels``: one compiled program
    per method serves every budget and setting. Particle counts and beam pools are masks over a fixed
    number of slots (``slots``, the largest budget), and the temperature, weights, resampling scheme,
    ESS threshold and beam width are traced arguments."""

    def __init__(self, gen, rm, slots):
        self.gen, self.rm, self.slots = gen, rm, int(slots)
        self._cache = {}

    def _jit(self, name, extra, make):
        key = (name, extra)
        if key not in self._cache:
            self._cache[key] = jax.jit(make())
        return self._cache[key]

    def init(self, prompts, n):
        gen = self.gen
        return self._jit("init", n, lambda: jax.vmap(lambda p: gen.init(p, n)))(prompts)

    def _filter(self, keys, prompts, n, temperature, resampling, weights, ess_threshold, resample):
        """The one particle-filter program (best-of-N is ``resample=False``): final answers, log-weights,
        outcome rewards, total generator calls and the calls of each slot (for rollouts) per problem."""
        gen, rm = self.gen, self.rm

        def make():
            def one(k, ini, n, tau, rs, w, ess, resample):
                out = K.run_particle_filtering(k, gen, rm, ini, num_particles=n, weights=w, temperature=tau,
                                               ess_threshold=ess, resampling=rs, resample=resample)
                per_slot = jnp.where(jnp.arange(self.slots) < n, calls_per_particle(gen, out.sweep.history.state), 0)
                return out.answers, out.log_weights, out.outcome_rewards, out.generator_calls, per_slot

            return jax.vmap(one, in_axes=(0, 0) + (None,) * 6)

        out = self._jit("pf", None, make)(keys, self.init(prompts, self.slots), n, float(temperature),
                                          K.MASKED_SCHEMES.index(resampling), K.WEIGHTS.index(weights),
                                          float(ess_threshold), resample)
        return tuple(np.asarray(a) for a in out)

    def pf(self, keys, prompts, budget, temperature, resampling, weights, ess_threshold):
        answers, lw, _, calls, _ = self._filter(keys, prompts, budget, temperature, resampling, weights,
                                                ess_threshold, True)
        return answers, lw, calls

    def beam(self, keys, prompts, budget, beam_width):
        """Answers, log outcome rewards (-inf past the final beams) and generator calls per problem."""
        gen, rm = self.gen, self.rm
        m = min(beam_width, budget)

        def make():
            def one(k, ini, num_beams, expansions):
                out = K.run_beam_search(k, gen, rm, ini, num_beams=num_beams, expansions=expansions)
                return out.answers, out.log_weights, jnp.sum(out.generator_calls)

            return jax.vmap(one, in_axes=(0, 0, None, None))

        out = self._jit("beam", None, make)(keys, self.init(prompts, self.slots), budget // m, m)
        return tuple(np.asarray(a) for a in out)

    def rollouts(self, keys, prompts, n):
        """``n`` independent rollouts per problem: answers, outcome rewards, calls per rollout."""
        answers, _, outcome, _, calls = self._filter(keys, prompts, n, 1.0, "multinomial", "per_step", 1.0, False)
        return answers[:, :n], outcome[:, :n], calls[:, :n]

    def pg(self, keys, prompts, budget, temperature, num_particles=PG_PARTICLES):
        """One particle-Gibbs chain of ``budget // num_particles`` sweeps per problem: the answers and
        final log-weights of chain 0's pool after every sweep, and the generator calls of every sweep."""
        gen, rm = self.gen, self.rm
        iters = budget // num_particles

        def make():
            def one(k, ini, tau):
                out = K.run_particle_gibbs(k, gen, rm, ini, jnp.reshape(tau, (1,)), num_iterations=iters)
                return out.answers[:, 0], out.log_weights[:, 0], jnp.sum(out.generator_calls.reshape(iters, -1), 1)

            return jax.vmap(one, in_axes=(0, 0, None))

        out = self._jit("pg", (budget, num_particles), make)(keys, self.init(prompts, num_particles),
                                                              float(temperature))
        return tuple(np.asarray(a) for a in out)


class ProblemSet:
    """Problems x seeds, flattened: row ``r * P + p`` is seed ``r`` of problem ``p``."""

    def __init__(self, prompts, truth, num_seeds, key):
        self.num_problems = int(truth.shape[0])
        self.num_seeds = int(num_seeds)
        self.prompts = jnp.tile(jnp.asarray(prompts), (num_seeds,) + (1,) * (jnp.ndim(prompts) - 1))
        self.truth = np.tile(np.asarray(truth), num_seeds)
        self.key = key

    def keys(self, *tags):
        k = self.key
        for t in tags:
            k = jax.random.fold_in(k, t)
        return jax.random.split(k, self.truth.shape[0])

    def score(self, chosen):
        """(accuracy, standard error over problems) of the chosen answers."""
        per_problem = np.mean((chosen == self.truth).reshape(self.num_seeds, self.num_problems), axis=0)
        se = np.std(per_problem, ddof=1) / np.sqrt(self.num_problems) if self.num_problems > 1 else np.nan
        return float(per_problem.mean()), float(se), per_problem


def pf_configs(quick=False):
    grid = dict(PF_GRID, resampling=QUICK_GRID["resampling"]) if quick else PF_GRID
    for tau, rs, (w, ess), sel in itertools.product(grid["temperature"], grid["resampling"],
                                                    grid["weights"], grid["selection"]):
        yield {"temperature": tau, "resampling": rs, "weights": w, "ess_threshold": ess, "selection": sel}


def beam_configs(quick=False):
    widths = QUICK_GRID["beam_width"] if quick else BEAM_GRID["beam_width"]
    for m, sel in itertools.product(widths, BEAM_GRID["selection"]):
        yield {"beam_width": m, "selection": sel}


def pf_label(c):
    return (f"τ={c['temperature']:g}, {c['resampling']}, {c['weights']}"
            + (f" (ESS<{c['ess_threshold']:g}N)" if c["weights"] == "accumulated" else "") + f", {c['selection']}")


def eval_pf_grid(runner, problems, budgets, num_answers, configs):
    """Accuracy of every PF configuration at every budget: {config index: [(acc, se, per_problem, calls)]}."""
    configs = list(configs)
    out = {i: [] for i in range(len(configs))}
    for b in budgets:
        runs = {}
        for i, c in enumerate(configs):
            run_key = (c["temperature"], c["resampling"], c["weights"], c["ess_threshold"])
            if run_key not in runs:  # argmax and vote share one run
                runs[run_key] = runner.pf(problems.keys(b, 1), problems.prompts, b, c["temperature"], c["resampling"],
                                          c["weights"], c["ess_threshold"])
            answers, lw, calls = runs[run_key]
            acc, se, pp = problems.score(select(answers, lw, c["selection"], num_answers))
            out[i].append((acc, se, pp, float(np.mean(calls))))
    return configs, out


def eval_beam_grid(runner, problems, budgets, num_answers, configs):
    configs = list(configs)
    out = {i: [] for i in range(len(configs))}
    for b in budgets:
        runs = {}
        for i, c in enumerate(configs):
            m = min(c["beam_width"], b)
            if m not in runs:
                runs[m] = runner.beam(problems.keys(b, 2), problems.prompts, b, c["beam_width"])
            answers, log_outcome, calls = runs[m]
            acc, se, pp = problems.score(select(answers, log_outcome, c["selection"], num_answers))
            out[i].append((acc, se, pp, float(np.mean(calls))))
    return configs, out


def eval_bon(runner, problems, budgets, num_answers):
    """BoN and WMV for every budget from one set of max(budgets) rollouts per problem (the first b
    rollouts are a best-of-b run): one compile for all budgets."""
    answers, outcome, calls = runner.rollouts(problems.keys(0, 3), problems.prompts, max(budgets))
    out = {"BoN": [], "WMV": []}
    for b in budgets:
        a, o, c = answers[:, :b], outcome[:, :b], float(np.mean(np.sum(calls[:, :b], 1)))
        lw = np.log(np.maximum(o, 1e-300))
        out["BoN"].append(problems.score(select(a, lw, "argmax", num_answers)) + (c,))
        out["WMV"].append(problems.score(select(a, lw, "vote", num_answers)) + (c,))
    return out


def eval_pg(runner, problems, budgets, temperature, selection, num_answers):
    """PG at every budget from one chain of max(budgets) / N sweeps per problem: its state after the
    first b / N sweeps is a PG run of budget b (as BoN's first b rollouts: one compile for all budgets)."""
    usable = [b for b in budgets if b >= PG_PARTICLES]
    if usable:
        answers, lw, calls = runner.pg(problems.keys(0, 4), problems.prompts, max(usable), temperature)
    res = []
    for b in budgets:
        if b < PG_PARTICLES:
            res.append((np.nan, np.nan, None, np.nan))
            continue
        i = b // PG_PARTICLES  # sweeps
        res.append(problems.score(select(answers[:, i - 1], lw[:, i - 1], selection, num_answers))
                   + (float(np.mean(np.sum(calls[:, :i], 1))),))
    return res


def choose(configs, results, budgets):
    """Index of the configuration with the highest mean accuracy over budgets > 1 (ties: the first,
    i.e. the default)."""
    means = [np.mean([r[0] for b, r in zip(budgets, results[i]) if b > 1]) for i in range(len(configs))]
    return int(np.argmax(means)), means


def budget_to_reach(budgets, accs, level):
    """Smallest budget (log-linear interpolation) at which an accuracy curve reaches ``level``."""
    lb = np.log2(budgets)
    accs = np.asarray(accs, float)
    for i in range(len(accs)):
        if np.isfinite(accs[i]) and accs[i] >= level:
            if i == 0 or not np.isfinite(accs[i - 1]):
                return float(budgets[i])
            f = (level - accs[i - 1]) / max(accs[i] - accs[i - 1], 1e-12)
            return float(2 ** (lb[i - 1] + f * (lb[i] - lb[i - 1])))
    return float("inf")


def _cell(r):
    acc, se = r[0], r[1]
    if not np.isfinite(acc):
        return "–"
    return f"{acc:.3f} ± {se:.3f}" if np.isfinite(se) else f"{acc:.3f}"


def scaling_table(name, budgets, curves, ref, levels=(0.6, 0.8, 0.9)):
    """Markdown: accuracy ± SE vs budget, generator calls per problem, and the scaling rate (budget
    each method needs to first reach an accuracy level, and its ratio to ``ref``)."""
    lines = [f"\n### {name}: accuracy vs budget (rollouts; ± one SE over problems)\n",
             "| method | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for m, res in curves.items():
        lines.append(f"| {m} | " + " | ".join(_cell(r) for r in res) + " |")
    lines.append("\nGenerator calls per problem (the same budget accounting for every method):\n")
    lines.append("| method | " + " | ".join(str(b) for b in budgets) + " |")
    lines.append("|---|" + "---|" * len(budgets))
    for m, res in curves.items():
        lines.append(f"| {m} | " + " | ".join("–" if not np.isfinite(r[3]) else f"{r[3]:.0f}" for r in res) + " |")
    lines.append(f"\nScaling rate: budget needed to first reach an accuracy level (ratio to {ref}):\n")
    lines.append("| method | " + " | ".join(f"acc {lv}" for lv in levels) + " |")
    lines.append("|---|" + "---|" * len(levels))
    need_ref = {lv: budget_to_reach(budgets, [r[0] for r in curves[ref]], lv) for lv in levels}
    for m, res in curves.items():
        cells = []
        for lv in levels:
            b = budget_to_reach(budgets, [r[0] for r in res], lv)
            if not np.isfinite(b):
                cells.append(f"> {budgets[-1]}")
            else:
                cells.append(f"{b:.1f} ({b / need_ref[lv]:.1f}x)" if np.isfinite(need_ref[lv]) else f"{b:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(budgets, curves, pairs):
    """Paired differences of accuracy (same problems) with their standard errors."""
    lines = ["\nPaired accuracy differences on the same test problems (± SE over problems):\n",
             "| difference | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for a, b in pairs:
        cells = []
        for ra, rb in zip(curves[a], curves[b]):
            if ra[2] is None or rb[2] is None:
                cells.append("–")
                continue
            d = ra[2] - rb[2]
            cells.append(f"{d.mean():+.3f} ± {np.std(d, ddof=1) / np.sqrt(d.size):.3f}")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# %%
def markov_world(args, budgets):
    """Markov reasoner with a noisy PRM built from the exact value function; the paper's default
    settings (one target, replications = seeds)."""
    world = T.random_markov_world(jax.random.key(0), num_digits=4, modulus=5, max_steps=6)
    target = 2
    gen = world.generator()
    rm = world.noisy_reward_model(jax.random.key(1), target, noise_scale=1.0)
    num_rep = 64 if args.quick else 400
    problems = ProblemSet(jnp.full((num_rep,), target), np.full(num_rep, target), 1, jax.random.key(100))
    runner = Runner(gen, rm, max(budgets))
    m = world.modulus
    default_pf = next(pf_configs())
    _, pf = eval_pf_grid(runner, problems, budgets, m, [default_pf, dict(default_pf, selection="vote")])
    _, beam = eval_beam_grid(runner, problems, budgets, m, [{"beam_width": 4, "selection": "argmax"}])
    bon = eval_bon(runner, problems, budgets, m)
    curves = {"PF": pf[0], "PF-vote": pf[1], "PG (N=4)": eval_pg(runner, problems, budgets, 1.0, "argmax", m),
              "BoN": bon["BoN"], "WMV": bon["WMV"], "Beam (M=min(4,B))": beam[0]}
    # one run up close: the particle filter's ESS and resampling over the reasoning steps
    one = S.particle_filtering(jax.random.key(2), gen, rm, target, budget=16, progress_bar=args.progress_bar)
    fig = bk.plots.smc_diagnostics(one, title="Markov reasoner: one particle-filtering run (budget 16)")
    bk.plots.save(fig, os.path.join(args.outdir, "scaling_pf_ess.png"))
    name = (f"Markov reasoner (P(correct) unguided = {world.success_probability(target):.3f}, noisy PRM, "
            f"{num_rep} replications, paper defaults)")
    return name, curves, scaling_table(name, budgets, curves, "PF")


def arithmetic_setup(args):
    """The learned arithmetic generator and the validation / test problems (shared by every PRM)."""
    t0 = time.time()
    arith = T.ArithmeticWorld.train(jax.random.key(2), num_iterations=600 if args.quick else 2000)
    num_problems = 96 if args.quick else 256
    num_seeds = 1 if args.quick else 2
    test_prompts, test_truth = T.ArithmeticWorld.sample_problems(jax.random.key(4), num_problems)
    val_prompts, val_truth = T.ArithmeticWorld.sample_problems(jax.random.key(5), 2 * num_problems)
    test_set = {tuple(p) for p in np.asarray(test_prompts).tolist()}
    keep = np.array([tuple(p) not in test_set for p in np.asarray(val_prompts).tolist()])
    val_prompts, val_truth = val_prompts[keep][:num_problems], val_truth[keep][:num_problems]
    assert not {tuple(p) for p in np.asarray(val_prompts).tolist()} & test_set  # disjoint
    print(f"(arithmetic generator trained in {time.time() - t0:.0f}s)", flush=True)
    return {"arith": arith, "num_problems": num_problems, "num_seeds": num_seeds,
            "val": (val_prompts, val_truth), "test": (test_prompts, test_truth)}


def verifier_prm(args, setup):
    """The noisy step verifier σ(±2 + 1.5ξ), ξ fixed per prefix."""
    return setup["arith"].verifier_reward_model(jax.random.key(3), confidence=2.0, noise_scale=1.5), ""


def learned_prm(args, setup):
    """A Math-Shepherd-style learned PRM, trained on problems disjoint from the validation and test
    problems; its quality (and the verifier's) is measured on further held-out problems."""
    t0 = time.time()
    arith = setup["arith"]
    used = np.concatenate([np.asarray(setup["val"][0]), np.asarray(setup["test"][0])])
    kw = {"num_problems": 512, "num_iterations": 300} if args.quick else {}
    prm = arith.train_reward_model(jax.random.key(6), exclude=used, **kw)
    used_set = {tuple(p) for p in used.tolist()}
    assert not {tuple(p) for p in np.asarray(prm.train_prompts).tolist()} & used_set  # disjoint from val/test
    t_train = time.time() - t0
    rm = prm.reward_model()
    exclude = np.concatenate([used, np.asarray(prm.train_prompts)])
    nq = 128 if args.quick else 512
    lines = [f"\n### PRM quality on held-out prefixes ({nq} problems disjoint from training, validation and "
             f"test; learned PRM trained in {t_train:.0f}s on {len(prm.train_prompts)} problems)\n",
             "| PRM | sibling ranking acc. | AUC (same step) | ECE | Brier vs MC value | sibling error rate | "
             "error rate given an error on another prefix with the same last step | same-state agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for name, model in (("learned (Math-Shepherd)", rm), ("noisy verifier σ(±2+1.5ξ)", verifier_prm(args, setup)[0])):
        q = arith.reward_model_quality(jax.random.key(7), model, num_problems=nq, exclude=exclude)
        lines.append(f"| {name} | {q['sibling_accuracy']:.3f} ± {q['sibling_accuracy_se']:.3f} | "
                     f"{q['auc']:.3f} ± {q['auc_se']:.3f} | {q['ece']:.3f} | {q['brier']:.3f} | "
                     f"{q['sibling_error_rate']:.3f} | {q['shared_error_rate']:.3f} | {q['same_state_agreement']:.3f} |")
    return rm, "\n".join(lines)


PRMS = {"verifier": ("noisy verifier PRM", verifier_prm), "learned": ("learned PRM", learned_prm)}


def learned_world(args, budgets, setup, prm="verifier"):
    """Learned arithmetic model + a PRM (``prm``: the noisy verifier or the learned PRM); settings
    chosen on validation problems, numbers reported on disjoint test problems."""
    t0 = time.time()
    arith = setup["arith"]
    acc_step = arith.step_accuracy()
    gen = arith.generator()
    prm_name, make_prm = PRMS[prm]
    rm, quality = make_prm(args, setup)
    num_problems, num_seeds = setup["num_problems"], setup["num_seeds"]
    val = ProblemSet(setup["val"][0], np.asarray(setup["val"][1]), num_seeds, jax.random.key(300))
    test = ProblemSet(setup["test"][0], np.asarray(setup["test"][1]), num_seeds, jax.random.key(200))
    runner = Runner(gen, rm, max(budgets))
    lines = [quality] if quality else []
    lines.append(f"\n### Learned arithmetic model, {prm_name}: validation ({num_problems} problems x {num_seeds} "
                 f"seeds, disjoint from the test problems{'; quick grid: ' + str(QUICK_GRID) if args.quick else ''})\n")
    # --- validation: choose PF and beam-search settings
    pf_cfgs, pf_val = eval_pf_grid(runner, val, budgets, 10, pf_configs(args.quick))
    i_pf, pf_means = choose(pf_cfgs, pf_val, budgets)
    per_budget = [int(np.argmax([pf_val[i][j][0] for i in range(len(pf_cfgs))])) for j in range(len(budgets))]
    beam_cfgs, beam_val = eval_beam_grid(runner, val, budgets, 10, beam_configs(args.quick))
    i_beam, beam_means = choose(beam_cfgs, beam_val, budgets)
    order = np.argsort(pf_means)[::-1]
    lines.append("| PF setting | mean val. acc. (budgets 2–128) | " + " | ".join(f"b={b}" for b in budgets) + " |")
    lines.append("|---|---|" + "---|" * len(budgets))
    for i in list(order[:6]) + ([0] if 0 not in order[:6] else []):
        lines.append(f"| {pf_label(pf_cfgs[i])}{' (paper default)' if i == 0 else ''} | {pf_means[i]:.3f} | "
                     + " | ".join(f"{r[0]:.3f}" for r in pf_val[i]) + " |")
    for i in np.argsort(beam_means)[::-1]:
        c = beam_cfgs[i]
        lines.append(f"| beam M={c['beam_width']}, {c['selection']} | {beam_means[i]:.3f} | "
                     + " | ".join(f"{r[0]:.3f}" for r in beam_val[i]) + " |")
    lines.append(f"\nChosen on validation: PF {pf_label(pf_cfgs[i_pf])}; beam search M={beam_cfgs[i_beam]['beam_width']}, "
                 f"{beam_cfgs[i_beam]['selection']}; per budget, PF: "
                 + "; ".join(f"{b}: {pf_label(pf_cfgs[i])}" for b, i in zip(budgets, per_budget)) + ".")
    # --- test: every reported number
    chosen = sorted({0, i_pf} | set(per_budget))
    cfgs_test = [pf_cfgs[i] for i in chosen]
    _, pf_test = eval_pf_grid(runner, test, budgets, 10, cfgs_test)
    pos = {i: j for j, i in enumerate(chosen)}
    pf_per_budget = [pf_test[pos[i]][j] for j, i in enumerate(per_budget)]
    beam_chosen = sorted({0, i_beam})
    _, beam_test = eval_beam_grid(runner, test, budgets, 10, [beam_cfgs[i] for i in beam_chosen])
    bpos = {i: j for j, i in enumerate(beam_chosen)}
    bon = eval_bon(runner, test, budgets, 10)
    c = pf_cfgs[i_pf]
    curves = {
        "PF (validated)": pf_test[pos[i_pf]],
        "PF (validated per budget)": pf_per_budget,
        "PF (paper default)": pf_test[pos[0]],
        f"PG (N={PG_PARTICLES}, validated τ)": eval_pg(runner, test, budgets, c["temperature"], c["selection"], 10),
        "BoN": bon["BoN"], "WMV": bon["WMV"],
        "Beam (validated)": beam_test[bpos[i_beam]],
        "Beam (M=min(4,B), argmax)": beam_test[bpos[0]],
    }
    name = (f"Learned arithmetic model, {prm_name}, TEST ({num_problems} problems x {num_seeds} seeds; step "
            f"accuracy {acc_step:.3f}; {time.time() - t0:.0f}s)")
    lines.append(scaling_table(name, budgets, curves, "PF (validated)", levels=(0.8, 0.9, 0.95)))
    lines.append(paired_table(budgets, curves, [("PF (validated)", "Beam (validated)"),
                                                ("PF (validated per budget)", "Beam (validated)"),
                                                ("PF (validated)", "Beam (M=min(4,B), argmax)"),
                                                ("PF (validated)", "WMV"), ("PF (validated)", "BoN"),
                                                ("PF (paper default)", "Beam (M=min(4,B), argmax)")]))
    if prm == "learned":  # the declared experiment (docs/scaling.md, "Learned PRM")
        lines.append(hypothesis_verdict(budgets, curves))
    return f"Learned arithmetic model, {prm_name} (test)", curves, "\n".join(lines)


def hypothesis_verdict(budgets, curves, a="PF (validated)", b="Beam (validated)"):
    """The declared test (docs/scaling.md): the paired difference a − b exceeds 2 SE at some budget
    in 2..16 and is never below −2 SE at any budget in 2..128."""
    z = {}
    for bud, ra, rb in zip(budgets, curves[a], curves[b]):
        if bud < 2 or ra[2] is None or rb[2] is None:
            continue
        d = ra[2] - rb[2]
        se = np.std(d, ddof=1) / np.sqrt(d.size)
        z[bud] = d.mean() / se if se > 0 else (0.0 if d.mean() == 0 else np.sign(d.mean()) * np.inf)
    better = [bud for bud, v in z.items() if bud <= 16 and v > 2]
    worse = [bud for bud, v in z.items() if v < -2]
    ok = bool(better) and not worse
    return (f"\nDeclared hypothesis ({a} − {b} > 2 SE at some budget in 2..16, never < −2 SE): "
            f"{'SUPPORTED' if ok else 'NOT SUPPORTED'} (z = "
            + ", ".join(f"{bud}: {v:+.1f}" for bud, v in z.items())
            + f"; better at {better or 'none'}; worse at {worse or 'none'}).")





def run_scaling(args, budgets, figs):
    out, curves_all = [], {}
    prms = ["verifier", "learned"] if args.prm == "both" else [args.prm]
    setup = None
    for world in ["markov"] + prms:
        if world == "markov":
            bud = budgets
            name, curves, txt = markov_world(args, bud)
        else:
            setup = setup or arithmetic_setup(args)
            # the quick run keeps the learned-PRM comparison short: budgets up to 16
            bud = budgets[:5] if (args.quick and world == "learned" and len(prms) > 1) else budgets
            name, curves, txt = learned_world(args, bud, setup, world)
        print(txt, flush=True)
        out.append(txt)
        curves_all[name] = (curves, bud)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves_all), figsize=(6 * len(curves_all), 4.5))
    for ax, (name, (curves, bud)) in zip(np.atleast_1d(axes), curves_all.items()):
        for m, res in curves.items():
            acc = np.array([r[0] for r in res])
            se = np.array([r[1] for r in res])
            ax.errorbar(bud, acc, yerr=se, marker="o", ms=3, capsize=2, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (rollouts)")
        ax.set_ylabel("accuracy")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.outdir, "scaling_accuracy_vs_budget.png")
    bk.plots.save(fig, path, dpi=120)
    figs.append(path)
    return "\n".join(out), {name: c for name, (c, _) in curves_all.items()}


# %%
def run_fkc(args, figs):
    sde = S.VESDE(0.01, 20.0)
    gm = T.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-3.0, 0.0], [3.0, 0.0]]),
                           jnp.stack([jnp.eye(2), jnp.array([[1.0, 0.5], [0.5, 1.5]])]))
    gm2 = T.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[3.0, 0.0], [0.0, 3.0]]),
                            jnp.stack([2 * jnp.eye(2), 2 * jnp.eye(2)]))
    n = 1000 if args.quick else 4000
    steps = 100 if args.quick else 400
    # exact references: annealed q^2 on a grid (quadrature), product in closed form
    g = np.linspace(-10, 10, 401)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    lp = 2.0 * np.asarray(gm.log_prob(jnp.asarray(pts)))
    p = np.exp(lp - lp.max())
    p /= p.sum()
    rng = np.random.default_rng(0)
    ann_exact = pts[rng.choice(len(p), 20000, p=p)] + rng.uniform(-0.025, 0.025, (20000, 2))
    prod_exact = np.asarray(T.product_of_mixtures(gm, gm2).sample(jax.random.key(9), 20000))
    cases = {
        "annealed q^2": ([gm.score_fn(sde)], [2.0], [gm.log_density_fn(sde)], ann_exact),
        "product q1*q2": ([gm.score_fn(sde), gm2.score_fn(sde)], [1.0, 1.0],
                          [gm.log_density_fn(sde), gm2.log_density_fn(sde)], prod_exact),
    }
    lines = ["\n### FKC on a 2-D Gaussian mixture (exact scores)\n",
             "| target | sampler | mean | var(x), var(y) | MMD^2 vs exact | null MMD^2 |", "|---|---|---|---|---|---|"]
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(11, 7), sharex=True, sharey=True)
    for row, (name, (scores, betas, logd, exact)) in enumerate(cases.items()):
        fkc = S.fkc_sample(jax.random.key(10 + row), scores, betas, num_particles=n, num_steps=steps, sde=sde,
                           log_densities=logd)
        heur = S.fkc_sample(jax.random.key(10 + row), scores, betas, num_particles=n, num_steps=steps, sde=sde,
                            weighted=False)
        fk_s = fkc.resample(jax.random.key(20 + row), min(n, 1000))
        ref = exact[:1000]
        null = T.mmd(exact[1000:2000], ref)
        lines.append(f"| {name} | exact | {np.round(exact.mean(0), 3)} | {np.round(exact.var(0), 3)} | – | {null:.5f} |")
        for label, samples in (("FKC (SMC)", fk_s), ("heuristic score mix", heur.samples[:1000])):
            lines.append(f"| {name} | {label} | {np.round(samples.mean(0), 3)} | {np.round(samples.var(0), 3)} | "
                         f"{T.mmd(samples, ref):.5f} | {null:.5f} |")
        for col, (label, samples) in enumerate((("exact", exact[:1000]), ("FKC", fk_s),
                                                ("heuristic", heur.samples[:1000]))):
            ax = axes[row, col]
            ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4)
            ax.set_title(f"{name}: {label}", fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.outdir, "fkc_gaussian_mixture.png")
    bk.plots.save(fig, path, dpi=120)
    figs.append(path)
    return "\n".join(lines)


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (wider error bars) and a smaller validation grid")
    parser.add_argument("--outdir", default="out/scaling", help="where figures and the table go")
    parser.add_argument("--prm", choices=("verifier", "learned", "both"), default="both",
                        help="PRM(s) of the learned arithmetic world: the noisy step verifier, the learned "
                             "(Math-Shepherd-style) PRM, or both (default; --quick runs the learned-PRM "
                             "comparison at budgets 1-16 only)")
    args = parse_example_args(parser, argv)
    os.makedirs(args.outdir, exist_ok=True)
    budgets = [1, 2, 4, 8, 16, 32, 64, 128]
    figs = []
    t0 = time.time()
    table, curves = run_scaling(args, budgets, figs)
    fkc = run_fkc(args, figs) + f"\n\n(total {time.time() - t0:.0f}s; figures: {', '.join(figs)})\n"
    print(fkc)
    table += "\n" + fkc
    with open(os.path.join(args.outdir, "scaling_table.md"), "w") as f:
        f.write(table)
    return curves


if __name__ == "__main__":
    main()
