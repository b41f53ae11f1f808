"""(Being written: see agents/zoo.py for the kinds it registers.)"""
