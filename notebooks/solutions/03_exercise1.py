def conv1x1_log_det(weight, height, width):
    # W = P L U with a unit-diagonal L, so |det W| = prod |U_kk|
    LU, _ = torch.linalg.lu_factor(weight)
    return height * width * torch.log(torch.diagonal(LU).abs()).sum()
