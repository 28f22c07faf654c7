def nll(mu, sigma, x):
    # the Monte Carlo estimate of eq. (1)'s objective for N(mu, sigma^2): no p_D needed
    return (0.5 * ((x - mu) / sigma) ** 2 + math.log(sigma) + 0.5 * LOG_2PI).mean()
