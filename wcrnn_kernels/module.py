FusedWCRNN = None
