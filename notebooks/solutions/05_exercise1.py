C0, growth, num_units = 124, 10, 4
z_channels = [C0] + [C0 + (j - 1) * growth for j in range(1, num_units + 1)]  # z_0, z_1, ..., z_4
widths_block1 = [sum(z_channels[:i]) for i in range(1, num_units)]  # g_i reads z_0 .. z_{i-1}


def g_params(c):
    # a 3x3 convolution to 4c channels, then a 1x1 convolution to 2 * growth, both with biases
    return (9 * c * 4 * c + 4 * c) + (4 * c * 2 * growth + 2 * growth)
