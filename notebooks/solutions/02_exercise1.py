def uniform_gap(x):
    # ln P(x) minus the expectation of ln p(x + u) over u ~ U[0, 1), by the trapezoidal rule
    u = torch.linspace(0, 1, 20_001, dtype=DTYPE)
    return log_pmf[x].item() - torch.trapezoid(log_p_v(x + u), u).item()
