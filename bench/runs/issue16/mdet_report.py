"""E7: metadetection on E4's skies, estimator registered in PLAN.md (E7)."""
import glob, json, os, sys
import numpy as np
from astropy.io import fits
sys.path.insert(0, '/work/main/scripts'); sys.path.insert(0, '/work/main')
import shear_bias as sb
import shear_validation as sv

STEPS = ('noshear', '1p', '1m', '2p', '2m')
E4 = '/work/e4'

RUN = os.environ.get('MDET_RUN', 'run_sp_mdet')

def mdet_half(field, half, run=None):
    run = run or RUN
    path = sorted(glob.glob(f'{field}/runs/{half}/{run}_2*/metadetect_runner/output/metadetect_cat-*.fits'))[-1]
    d = fits.getdata(path, 'METADETECT')
    step = float(fits.getheader(path, 'METADETECT')['MDETSTEP'])
    with np.errstate(invalid='ignore'):
        sel = (d['MDET_FLAGS'] == 0) & (d['MASK_FLAGS'] == 0) & (d['MDET_S2N'] > 10) & (d['MDET_T_RATIO'] > 0.5)
    if os.environ.get('NO_TRUE_STARS'):
        from scipy.spatial import cKDTree
        t = fits.getdata(f'{field}/data/{half}/truth/objects.fits')
        cosd = np.cos(np.radians(np.median(t['DEC'])))
        dist, k = cKDTree(np.c_[t['RA'] * cosd, t['DEC']] * 3600).query(np.c_[d['RA'] * cosd, d['DEC']] * 3600)
        sel &= ~((dist < 1.0) & (t['IS_STAR'][k] == 1))
    mean = {}
    for t in STEPS:
        r = d[sel & (d['MDET_STEP'] == t)]
        mean[t] = np.array([r['MDET_G1'].mean(), r['MDET_G2'].mean()])
    R = np.column_stack([(mean['1p'] - mean['1m']) / (2 * step), (mean['2p'] - mean['2m']) / (2 * step)])
    ns = d[sel & (d['MDET_STEP'] == 'noshear')]
    n = len(ns)
    # half_sums-compatible: every object carries the half's response; no separate R_S
    return {'g': np.column_stack([ns['MDET_G1'], ns['MDET_G2']]), 'R': np.repeat(R[None], n, 0),
            'R_S': np.zeros((2, 2)), 'psf': np.column_stack([ns['PSF_G1'], ns['PSF_G2']]),
            'snr': np.asarray(ns['MDET_S2N'], float), 't_ratio': np.asarray(ns['MDET_T_RATIO'], float),
            'n_steps': {t: int((sel & (d['MDET_STEP'] == t)).sum()) for t in STEPS}}

def e4_half(field, half, select):
    with open(f'{field}/{half}.done') as fh:
        files = fh.read().split()
    return sb.half_sums(files, f'{field}/data/{half}/truth', select)

plan = json.load(open(f'{E4}/plan.json'))
shear = plan['shear']
fields = sorted(glob.glob(f'{E4}/fields/field_*'))
leaks = sorted(glob.glob(f'{E4}/fields/leak_*'))
mdet = {'normal': [{h: mdet_half(f, h) for h in sb.HALVES} for f in fields],
        'leaky': [{h: mdet_half(f, h) for h in sb.HALVES} for f in leaks]}
groups = [[0, 1], [2, 3], [4, 5]]
out = {'method': 'metadetect', 'cuts': 'MDET_FLAGS==0, MASK_FLAGS==0, MDET_S2N>10, MDET_T_RATIO>0.5',
       'all': sb.biases(mdet['normal'], shear, groups=groups),
       'leakage': sb.leakage(mdet['normal'], mdet['leaky'], paired=True),
       'R_per_half': [[f[h]['R'][0].tolist() for h in sb.HALVES] for f in mdet['normal']],
       'counts_per_step': [[f[h]['n_steps'] for h in sb.HALVES] for f in mdet['normal']]}
select = sv.make_selector(json.load(open(f'{E4}/shear_bias.json'))['cuts'])
e4 = {'normal': [{h: e4_half(f, h, select) for h in sb.HALVES} for f in fields],
      'leaky': [{h: e4_half(f, h, select) for h in sb.HALVES} for f in leaks]}
out['e4_all_check'] = sb.biases(e4['normal'], shear, groups=groups)
out['compare_minus_e4'] = sb.compare(e4, mdet, shear, groups)
if RUN != 'run_sp_mdet':
    e7 = {'normal': [{h: mdet_half(f, h, 'run_sp_mdet') for h in sb.HALVES} for f in fields],
          'leaky': [{h: mdet_half(f, h, 'run_sp_mdet') for h in sb.HALVES} for f in leaks]}
    out['compare_minus_e7'] = sb.compare(e7, mdet, shear, groups)
json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else '/work/e7_summary.json', 'w'), indent=1)
a = out['all']
print(RUN, 'metadetect: m = %+.4f +- %.4f  c1 = %+.5f +- %.5f  c2 = %+.5f +- %.5f  n = %d' % (a['m'], a['m_err'], a['c1'], a['c1_err'], a['c2'], a['c2_err'], a['n_objects']))
l = out['leakage']
print('alpha = (%+.3f +- %.3f, %+.3f +- %.3f)' % (l['alpha1'], l['alpha1_err'], l['alpha2'], l['alpha2_err']))
c = out['compare_minus_e4']
print('minus E4: d_m = %+.4f +- %.4f  d_c1 = %+.5f +- %.5f d_c2 = %+.5f +- %.5f' % (c['d_m'], c['d_m_err'], c['d_c1'], c['d_c1_err'], c['d_c2'], c['d_c2_err']), 'd_alpha', c.get('d_alpha1'), c.get('d_alpha1_err'))
print('E4 check m', out['e4_all_check']['m'], out['e4_all_check']['m_err'])
if 'compare_minus_e7' in out:
    c = out['compare_minus_e7']
    print('minus E7: d_m = %+.4f +- %.4f  d_c1 = %+.5f +- %.5f' % (c['d_m'], c['d_m_err'], c['d_c1'], c['d_c1_err']))
print('R per half', [[np.round(np.diag(np.array(r)), 3).tolist() for r in f] for f in out['R_per_half']])
