"""RADMM references for the serial and MPI tests: a trainer's blocks by name, its memory, the
whole-network start of blocks.py and Jacobi PRU simulated in one process."""

import torch

from radmm_hpc.algos.radmm import blocks as rb


def owned_tensors(tr):
    """(name, tensor) of every W, U, V (and Λ) block this trainer owns."""
    out = []
    for l in tr.own_layers():
        out.append((f"W{l}", tr.st["W"][l - 1]))
        if l < tr.L:
            out += [(f"U{l}", tr.st["U"][l - 1]), (f"V{l}", tr.st["V"][l - 1])]
        else:
            out += [(f"V{l}", tr.st["V"][l - 1]), ("Lam", tr.st["Lam"])]
    return out


def tensor_bytes(tr):
    """Bytes of every tensor a trainer holds (its state and boundary buffers)."""
    seen, total = set(), 0
    tensors = [t for k in ("W", "U", "V") for t in tr.st[k] if t is not None]
    tensors += [tr.st[k] for k in ("Lam", "X", "Y") if tr.st[k] is not None]
    tensors += [getattr(tr, k) for k in ("Q", "M", "Vb", "Qn", "Mn") if getattr(tr, k, None) is not None]
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def fc_state(W, X, Y, loss="squared"):
    """blocks.py's whole-network state for the weights W (X with its ones row, samples as
    columns): U, V by a forward pass, V_L = W_L V_{L-1}, Λ = −N∇ℓ(V_L) (a feasible start)."""
    U, V, prev = [], [], X
    for i, w in enumerate(W[:-1]):
        U.append(w @ prev)
        V.append(rb.sigma(U[-1]) + (prev if i else 0))
        prev = V[-1]
    V.append(W[-1] @ prev)
    return {"W": [w.clone() for w in W], "U": U, "V": V, "X": X, "Y": Y, "tau": {}, "it": 0,
            "Lam": rb.lagrange_multiplier_from_loss(V[-1], Y, loss)}


# ---- Jacobi PRU simulated in one process: the reference for the MPI schedule -------------------
def init_jacobi(st, P):
    """Regions, boundary copies Q_r = V_{s_r-1}, duals M_r = 0 and received V_b (r = 1..P-1)."""
    regions = rb.partition_hidden(len(st["W"]) - 1, P)
    st["regions"] = regions
    st["Q"] = [None] + [st["V"][s - 2].clone() for s, _ in regions[1:]]
    st["M"] = [None] + [torch.zeros_like(st["V"][s - 2]) for s, _ in regions[1:]]
    st["Vb"] = [None] + [st["V"][s - 2].clone() for s, _ in regions[1:]]
    return st


def jacobi_sweep(st, p):
    """One Jacobi-PRU iteration: every region updates from the previous iteration's neighbour
    data (its received V_b; for its last V the next region's Q, M), Q_r first, then its layers,
    then the output group on the last region; then V_b moves forward and M_r += β_b (Q_r − V_b)."""
    regions, W, U, V = st["regions"], st["W"], st["U"], st["V"]
    P = len(regions)
    Q_old = [None] + [q.clone() for q in st["Q"][1:]]
    M_old = [None] + [m.clone() for m in st["M"][1:]]
    for r, (s, e) in enumerate(regions):
        if r > 0:
            i, Vb, ob = s - 1, st["Vb"][r], rb._omb(p)
            if p.variant == "two_split":
                tau0 = 0.5 * st["tau"].get(("Q", r), 1.0)
                st["Q"][r], st["tau"][("Q", r)] = rb.update_Q_2s(W[i], V[i], st["M"][r], Vb, st["Q"][r],
                                                                 p.rho, p.beta_b, ob, tau0)
            elif p.variant == "linear":
                st["Q"][r] = rb.update_Q_lin(W[i], U[i], V[i], U[i], st["M"][r], Vb, st["Q"][r], p.gamma,
                                             p.rho, p.beta_b, ob, iters=p.power_iters, safety=p.tau_safety)
            else:
                st["Q"][r] = rb.update_Q(W[i], U[i], V[i], U[i], st["M"][r], Vb, st["Q"][r], p.gamma,
                                         p.rho, p.beta_b, ob)
        for l in range(s, e + 1):
            prev = (st["X"] if r == 0 else st["Q"][r]) if l == s else V[l - 2]
            override = (Q_old[r + 1], M_old[r + 1]) if (l == e and r < P - 1) else None
            rb._hidden_block(st, p, l, prev, next_override=override)
        if r == P - 1:
            rb._output_block(st, p)
    for r in range(1, P):
        st["Vb"][r] = V[regions[r][0] - 2].clone()
        st["M"][r] = rb.update_M(st["M"][r], st["Q"][r], st["Vb"][r], p.beta_b)
    return st


def jacobi_merit(st, p):
    """L_β of the Jacobi-PRU problem: layer s_r reads Q_r, plus the boundary terms."""
    W, U, V, X = st["W"], st["U"], st["V"], st["X"]
    L, N = len(W), X.shape[1]
    starts = {s: r for r, (s, _) in enumerate(st["regions"]) if r > 0}
    tot = 0.0
    for l in range(1, L):
        i = l - 1
        prev = X if l == 1 else (st["Q"][starts[l]] if l in starts else V[i - 1])
        if p.variant == "two_split":
            tot += rb.merit_hidden_2s(W[i], V[i], prev, l > 1, p.rho, p.lam, N)
        else:
            tot += rb.merit_hidden(W[i], U[i], V[i], prev, l > 1, p.gamma, p.rho, p.lam, N)
    tot += rb.merit_out(st["Y"], V[L - 1], st["Lam"], W[L - 1], V[L - 2], p.beta, p.lam, N, p.loss)
    for s, r in starts.items():
        tot += rb.merit_boundary(st["Q"][r], st["M"][r], V[s - 2], p.beta_b, N)
    return tot
