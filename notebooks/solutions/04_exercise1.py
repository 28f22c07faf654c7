log_p_star = log_normal(e_grid)
log_post_raw = log_p_joint(z0_t, e_grid) - log_p_z0  # ln p(e | z0), raw noise
kl_paper = torch.trapezoid(log_p_star.exp() * (log_p_star - log_post_raw), e_grid).item()
