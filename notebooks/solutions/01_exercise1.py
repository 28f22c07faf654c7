def log_p_sinh(x):
    return log_normal(torch.sinh(x)) + torch.log(torch.cosh(x))  # ln p(f(x)) + ln|f'(x)|
