import path from 'node:path';
import { dataRoot } from '../../src/data/data-root.js';

/** The real data the tests read (RATIO_DATA_DIR, else ../shared/data), as the code resolves it. */
export const DATA_DIR = dataRoot();

/** The first 1000 CIFAR-10 test records (CIFAR binary). */
export const CIFAR_TEST_FILE = path.join(DATA_DIR, 'cifar10/test_batch_first1000.bin');
