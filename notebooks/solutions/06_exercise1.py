def dense_block_params(c_in, c_out, depth, growth):
    total = 0
    for k in range(depth):
        c_k = c_in + k * growth
        total += (c_k * c_k + c_k) + (9 * c_k * growth + growth)  # 1x1 conv, 3x3 conv
    c_last = c_in + depth * growth
    return total + c_last * 3 * c_out + 3 * c_out  # the gate: a + b * sigmoid(c)
